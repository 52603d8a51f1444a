//! What every response shares: request ids, the access log, the API version header,
//! operator-configured headers, and how URLs in `Location` headers are built.

use crate::server::ConnectionInfo;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Extensions, HeaderName, HeaderValue, StatusCode};
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

/// How the client reached us: scheme and host, for URLs handed back to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: &'static str,
    host: Option<String>,
}

/// Works out the client's address and the origin it used, believing `X-Forwarded-*`
/// only from a trusted proxy, so that nothing later (`Location` URLs, token realms, rate
/// limits) can be steered by a client's headers.
async fn forwarded(options: Arc<EdgeOptions>, mut req: Request, next: Next) -> Response {
    let info = req.extensions().get::<ConnectionInfo>().copied();
    let trusted = |ip: &IpAddr| options.trusted_proxies.iter().any(|net| net.contains(ip));
    let from_proxy = info.is_some_and(|i| trusted(&i.peer.ip()));
    let headers = req.headers();
    let first = |name: &str| {
        let value = headers.get(name).and_then(|h| h.to_str().ok())?;
        Some(value.split(',').next().unwrap_or(value).trim().to_owned()).filter(|v| !v.is_empty())
    };
    let direct_scheme = if info.is_some_and(|i| i.tls) { "https" } else { "http" };
    let (scheme, host) = if from_proxy {
        let scheme = match first("x-forwarded-proto").as_deref() {
            Some("https") => "https",
            Some("http") => "http",
            _ => direct_scheme,
        };
        (scheme, first("x-forwarded-host").or_else(|| first(header::HOST.as_str())))
    } else {
        (direct_scheme, first(header::HOST.as_str()))
    };
    let client = info.map(|i| {
        let peer = i.peer.ip();
        if !from_proxy {
            return peer;
        }
        let hops = headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
        let hops: Vec<IpAddr> = hops.flat_map(|v| v.split(',')).filter_map(|h| h.trim().parse().ok()).collect();
        hops.into_iter().rev().find(|ip| !trusted(ip)).unwrap_or(peer)
    });
    if let Some(ip) = client {
        req.extensions_mut().insert(ClientIp(ip));
    }
    req.extensions_mut().insert(Origin { scheme, host });
    next.run(req).await
}

/// One log line per request, with the request id clients and proxies can quote, and a
/// span around the request so that every line logged while serving it carries the id.
async fn access_log(options: Arc<EdgeOptions>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let peer = req.extensions().get::<ConnectionInfo>().map(|i| i.peer.ip().to_string()).unwrap_or_default();
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
/// `http.relativeurls` is set.
pub(crate) fn url(options: &EdgeOptions, extensions: &Extensions, path: &str) -> String {
    if options.relative_urls {
        return path.to_owned();
    }
    absolute_url(extensions, path).unwrap_or_else(|| path.to_owned())
}

/// The absolute URL of `path` on the origin the client used, if it named a host.
pub(crate) fn absolute_url(extensions: &Extensions, path: &str) -> Option<String> {
    let origin = extensions.get::<Origin>()?;
    let host = origin.host.as_deref()?;
    Some(format!("{}://{host}{path}", origin.scheme))
}

/// Whether the client reached us over HTTPS (itself or through a trusted proxy).
pub(crate) fn is_https(extensions: &Extensions) -> bool {
    extensions.get::<Origin>().is_some_and(|o| o.scheme == "https")
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
