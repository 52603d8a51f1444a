//! What every response shares: request ids, the access log, the API version header,
//! operator-configured headers, and how URLs in `Location` headers are built.

use crate::server::ClientAddr;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Router;
use berth_proto::ErrorCode;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tracing::Instrument;

/// Options of the HTTP edge, from the `http` section of the configuration.
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// `http.relativeurls`: `Location` headers without scheme and host.
    pub relative_urls: bool,
    /// `http.headers`: added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `berth.http.bodytimeout`: the longest a request body may stall.
    pub body_timeout: Duration,
    /// `berth.http.trustedproxies`: peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The address of the client a request comes from: the connection's peer, or, when
/// that peer is a trusted proxy, the last address it forwarded for that is not itself
/// a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// Layers, outermost first: request id, the request's span and access log, what a
/// proxy forwarded, panic recovery, then the router.
pub(crate) fn wrap(router: Router, options: Arc<EdgeOptions>) -> Router {
    let forwarded_options = options.clone();
    router
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(move |req, next| forwarded(forwarded_options.clone(), req, next)))
        .layer(middleware::from_fn(move |req, next| access_log(options.clone(), req, next)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// A handler that panicked: the spec's error JSON with a 500. The panic itself is
/// logged by the hook [`log_panics`] installs, inside the request's span.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let mut resp = crate::error::ApiError::new(ErrorCode::Internal, ErrorCode::Internal.message()).into_response();
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Routes panics to the log, with the span (and so the request id) they happened in.
/// Where no subscriber is set (unit tests), the previous hook still prints them.
pub fn log_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if tracing::dispatcher::has_been_set() {
            let message = info.payload_as_str().unwrap_or("(no message)");
            let location = info.location().map(ToString::to_string).unwrap_or_default();
            // Captured only when RUST_BACKTRACE asks for it.
            let backtrace = std::backtrace::Backtrace::capture();
            tracing::error!(panic = message, %location, %backtrace, "panicked");
        } else {
            previous(info);
        }
    }));
}

const FORWARDED_HEADERS: [&str; 4] = ["x-forwarded-host", "x-forwarded-proto", "x-forwarded-for", "forwarded"];

/// Drops `X-Forwarded-*` unless the peer is a trusted proxy, so that nothing later
/// (`Location` URLs, token realms, rate limits) can be steered by a client's headers,
/// and records the client's address.
async fn forwarded(options: Arc<EdgeOptions>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ClientAddr>().map(|a| a.0.ip());
    let trusted = |ip: &IpAddr| options.trusted_proxies.iter().any(|net| net.contains(ip));
    let client = match peer {
        Some(peer) if trusted(&peer) => {
            let hops = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
            let hops: Vec<IpAddr> = hops.flat_map(|v| v.split(',')).filter_map(|h| h.trim().parse().ok()).collect();
            Some(hops.into_iter().rev().find(|ip| !trusted(ip)).unwrap_or(peer))
        }
        Some(peer) => {
            for name in FORWARDED_HEADERS {
                req.headers_mut().remove(name);
            }
            Some(peer)
        }
        None => None,
    };
    if let Some(ip) = client {
        req.extensions_mut().insert(ClientIp(ip));
    }
    next.run(req).await
}

/// One log line per request, with the request id clients and proxies can quote, and a
/// span around the request so that every line logged while serving it carries the id.
async fn access_log(options: Arc<EdgeOptions>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let peer = req.extensions().get::<ClientAddr>().map(|a| a.0.ip().to_string()).unwrap_or_default();
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut resp = next.run(req).instrument(span).await;
    let headers = resp.headers_mut();
    headers.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    for (name, value) in &options.headers {
        headers.append(name.clone(), value.clone());
    }
    tracing::info!(
        target: "berth::access",
        request_id,
        peer,
        %method,
        path,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

/// The URL of `path` as the client reached us: absolute like registry:2 unless
/// `http.relativeurls` is set, honouring the headers a trusted TLS-terminating proxy
/// adds (from anyone else they were dropped by [`forwarded`]).
pub(crate) fn url(options: &EdgeOptions, headers: &HeaderMap, path: &str) -> String {
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|h| h.to_str().ok())
        .map(|h| h.split(',').next().unwrap_or(h).trim());
    match host {
        Some(host) if !options.relative_urls && !host.is_empty() => {
            let scheme = headers
                .get("x-forwarded-proto")
                .and_then(|h| h.to_str().ok())
                .map(|p| p.split(',').next().unwrap_or(p).trim())
                .filter(|p| *p == "https" || *p == "http")
                .unwrap_or("http");
            format!("{scheme}://{host}{path}")
        }
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// Log output collected in memory.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
        type Writer = Logs;
        fn make_writer(&'a self) -> Logs {
            self.clone()
        }
    }

    fn request(path: &str) -> Request {
        Request::get(path).header("x-request-id", "req-42").body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_goes_on() {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        log_panics();
        let options = Arc::new(EdgeOptions {
            relative_urls: false,
            headers: Vec::new(),
            body_timeout: Duration::ZERO,
            trusted_proxies: Vec::new(),
        });
        let routes: Router = Router::new()
            .route("/boom", get(|| async { panic!("handler bug") as &'static str }))
            .route("/warn", get(|| async { tracing::warn!("inside a request") }));
        let app = wrap(routes, options);

        let resp = app.clone().oneshot(request("/boom")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()[&REQUEST_ID], "req-42");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errors"][0]["code"], "UNKNOWN");
        assert!(!body.windows(10).any(|w| w == b"handler bu"), "the panic message must not reach clients");

        let resp = app.oneshot(request("/warn")).await.unwrap();
        // Back to the default hook, so that a failing assertion below is printed.
        drop(std::panic::take_hook());
        assert_eq!(resp.status(), StatusCode::OK);

        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let line = |needle: &str| text.lines().find(|l| l.contains(needle)).map(str::to_owned);
        let panicked = line("panicked").unwrap_or_else(|| panic!("no panic line in:\n{text}"));
        assert!(panicked.contains("req-42") && panicked.contains("handler bug"), "{panicked}");
        let warned = line("inside a request").unwrap_or_else(|| panic!("no warning in:\n{text}"));
        assert!(warned.contains("req-42"), "{warned}");
    }
}
