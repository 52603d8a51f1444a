//! OpenStack Swift authentication for OpenDAL's `swift` service, which takes one fixed
//! token: Swift tokens expire (TempAuth's after a day, Keystone's after an hour by
//! default), so Berth logs in itself (TempAuth v1 or Keystone v3 password) and gives
//! OpenDAL an HTTP transport that puts the current token on every request, logs in
//! again shortly before the token expires or when Swift refuses one with 401, and then
//! sends that request once more.

use opendal::{Buffer, ErrorKind, HttpBody, HttpTransport, HttpTransporter};
use serde::Deserialize;
use std::io;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// How to log in to Swift, with what registry:2's `storage.swift` says.
#[derive(Debug, Clone, Default)]
pub struct SwiftLogin {
    /// TempAuth's `.../auth/v1.0`, or Keystone's `.../v3`.
    pub auth_url: String,
    /// 1 (TempAuth) or 3 (Keystone v3); 0: from `auth_url`.
    pub auth_version: u8,
    pub username: String,
    pub password: String,
    /// The project the token is scoped to, by name (in `project_domain`, else the
    /// user's domain) or by id.
    pub project: Option<String>,
    pub project_id: Option<String>,
    pub project_domain: Option<Name>,
    /// The user's domain (Keystone's `Default` when absent).
    pub domain: Option<Name>,
    /// A trust to scope the token to instead of a project.
    pub trust_id: Option<String>,
    /// Which object-store endpoint of Keystone's catalog: its region (else the first)
    /// and interface (`public`, `internal`, `admin`).
    pub region: Option<String>,
    pub interface: String,
}

/// A Keystone domain or project, by name or by id.
#[derive(Debug, Clone)]
pub enum Name {
    Name(String),
    Id(String),
}

/// A logged-in session: the token, when it expires, and the account's storage URL.
#[derive(Debug)]
pub(crate) struct Login {
    token: http::HeaderValue,
    pub(crate) expires: Option<SystemTime>,
    pub(crate) storage_url: String,
}

/// How often one login is tried (see [`SwiftLogin::login`]).
const LOGIN_ATTEMPTS: u32 = 3;

/// Log in again this long before a token expires, so that no request carries a token
/// that expires on its way.
const RENEW_BEFORE: Duration = Duration::from_secs(120);

impl SwiftLogin {
    fn version(&self) -> u8 {
        match self.auth_version {
            0 if self.auth_url.trim_end_matches('/').contains("/v3") => 3,
            0 => 1,
            v => v,
        }
    }

    /// Logs in; a login the network or the auth server failed (a dropped connection, a
    /// 5xx) is tried again, up to [`LOGIN_ATTEMPTS`] times: it changes nothing, so
    /// repeating it is safe.
    pub(crate) async fn login(&self, http: &HttpTransporter) -> io::Result<Login> {
        let mut pause = Duration::from_millis(100);
        for _ in 1..LOGIN_ATTEMPTS {
            match self.login_once(http).await {
                Err(e) if e.kind() == io::ErrorKind::NetworkDown => {
                    tracing::debug!(error = %e, "Swift login failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                done => return done,
            }
        }
        self.login_once(http).await
    }

    async fn login_once(&self, http: &HttpTransporter) -> io::Result<Login> {
        match self.version() {
            1 => self.login_v1(http).await,
            3 => self.login_v3(http).await,
            2 => Err(invalid("Keystone v2.0 left OpenStack in Queens (2018): use `authversion: 3`")),
            v => Err(invalid(&format!("`authversion` {v}: 1 (TempAuth) or 3 (Keystone v3)"))),
        }
    }

    /// TempAuth (and Swift's other v1 auth systems): credentials in headers, the token
    /// and storage URL in the answer's.
    async fn login_v1(&self, http: &HttpTransporter) -> io::Result<Login> {
        let req = http::Request::get(&self.auth_url)
            .header("X-Auth-User", &self.username)
            .header("X-Auth-Key", sensitive(&self.password)?)
            .body(Buffer::new())
            .map_err(io::Error::other)?;
        let resp = send(http, req).await?;
        let headers = resp.headers();
        let (Some(token), Some(url)) = (headers.get("x-auth-token"), headers.get("x-storage-url")) else {
            return Err(invalid("the v1 auth answer has no X-Auth-Token or X-Storage-Url"));
        };
        let expires = headers
            .get("x-auth-token-expires")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(|secs| SystemTime::now() + Duration::from_secs(secs));
        let storage_url = url.to_str().map_err(|_| invalid("X-Storage-Url is not text"))?.to_owned();
        Ok(Login { token: secret(token.clone()), expires, storage_url })
    }

    /// Keystone v3: a password login scoped to the project (or trust); the token comes
    /// in `X-Subject-Token`, the storage URL from the catalog's object-store service.
    async fn login_v3(&self, http: &HttpTransporter) -> io::Result<Login> {
        let base = self.auth_url.trim_end_matches('/');
        let url = if base.ends_with("/auth/tokens") { base.to_owned() } else { format!("{base}/auth/tokens") };
        let body = serde_json::to_vec(&self.v3_request()).map_err(io::Error::other)?;
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Buffer::from(body))
            .map_err(io::Error::other)?;
        let resp = send(http, req).await?;
        let token = resp.headers().get("x-subject-token").cloned().ok_or_else(|| invalid("no X-Subject-Token"))?;
        let answer: V3Answer = serde_json::from_slice(&resp.into_body().to_bytes())
            .map_err(|e| invalid(&format!("Keystone's token answer: {e}")))?;
        let expires = answer.token.expires_at.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        let storage_url = self.endpoint(&answer.token.catalog).ok_or_else(|| {
            invalid(&format!(
                "Keystone's catalog has no {} object-store endpoint{}",
                self.interface,
                self.region.as_deref().map(|r| format!(" in region {r}")).unwrap_or_default()
            ))
        })?;
        Ok(Login { token: secret(token), expires, storage_url })
    }

    fn v3_request(&self) -> serde_json::Value {
        use serde_json::json;
        let domain = |d: &Option<Name>| match d {
            Some(Name::Id(id)) => json!({ "id": id }),
            Some(Name::Name(name)) => json!({ "name": name }),
            None => json!({ "id": "default" }),
        };
        let scope = match (&self.trust_id, &self.project_id, &self.project) {
            (Some(trust), _, _) => json!({ "OS-TRUST:trust": { "id": trust } }),
            (None, Some(id), _) => json!({ "project": { "id": id } }),
            (None, None, Some(name)) => {
                let of = if self.project_domain.is_some() { &self.project_domain } else { &self.domain };
                json!({ "project": { "name": name, "domain": domain(of) } })
            }
            (None, None, None) => serde_json::Value::Null,
        };
        let mut auth = json!({
            "identity": {
                "methods": ["password"],
                "password": { "user": { "name": self.username, "password": self.password, "domain": domain(&self.domain) } }
            }
        });
        if !scope.is_null() {
            auth["scope"] = scope;
        }
        json!({ "auth": auth })
    }

    fn endpoint(&self, catalog: &[V3Service]) -> Option<String> {
        let store = catalog.iter().find(|s| s.kind == "object-store")?;
        store
            .endpoints
            .iter()
            .filter(|e| e.interface == self.interface)
            .find(|e| {
                self.region.as_ref().is_none_or(|r| e.region_id.as_ref() == Some(r) || e.region.as_ref() == Some(r))
            })
            .map(|e| e.url.clone())
    }
}

#[derive(Deserialize)]
struct V3Answer {
    token: V3Token,
}

#[derive(Deserialize)]
struct V3Token {
    expires_at: Option<String>,
    #[serde(default)]
    catalog: Vec<V3Service>,
}

#[derive(Deserialize)]
struct V3Service {
    #[serde(rename = "type")]
    kind: String,
    endpoints: Vec<V3Endpoint>,
}

#[derive(Deserialize)]
struct V3Endpoint {
    interface: String,
    region: Option<String>,
    region_id: Option<String>,
    url: String,
}

/// Sends an auth request: a refusal is `PermissionDenied`, a store that cannot answer
/// is as retryable as any other outage.
async fn send(http: &HttpTransporter, req: http::Request<Buffer>) -> io::Result<http::Response<Buffer>> {
    let url = req.uri().to_string();
    let resp = http.send(req).await.map_err(|e| io::Error::new(io::ErrorKind::NetworkDown, e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let kind = match status.as_u16() {
        401 | 403 => io::ErrorKind::PermissionDenied,
        429 | 500.. => io::ErrorKind::NetworkDown,
        _ => io::ErrorKind::InvalidInput,
    };
    Err(io::Error::new(kind, format!("Swift login at {url}: {status}")))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("Swift login: {msg}"))
}

fn sensitive(value: &str) -> io::Result<http::HeaderValue> {
    http::HeaderValue::from_str(value).map(secret).map_err(|_| invalid("the password is not a valid header value"))
}

fn secret(mut value: http::HeaderValue) -> http::HeaderValue {
    value.set_sensitive(true);
    value
}

/// The HTTP transport OpenDAL's swift service sends through: the current token on
/// every request, a new login when it is due or refused.
#[derive(Clone)]
pub(crate) struct SwiftAuth {
    inner: HttpTransporter,
    login: Arc<SwiftLogin>,
    current: Arc<RwLock<Arc<Login>>>,
    /// One login at a time: the requests a refused token fails together wait for it.
    renewing: Arc<tokio::sync::Mutex<()>>,
}

impl SwiftAuth {
    pub(crate) fn new(inner: HttpTransporter, login: SwiftLogin, first: Login) -> SwiftAuth {
        SwiftAuth {
            inner,
            login: Arc::new(login),
            current: Arc::new(RwLock::new(Arc::new(first))),
            renewing: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn current(&self) -> Arc<Login> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The token to send: the current one, unless it is about to expire.
    async fn token(&self) -> opendal::Result<Arc<Login>> {
        let now = self.current();
        match now.expires {
            Some(at) if SystemTime::now() + RENEW_BEFORE >= at => self.renew(&now).await,
            _ => Ok(now),
        }
    }

    /// Logs in again, unless another request already replaced `stale`.
    async fn renew(&self, stale: &Arc<Login>) -> opendal::Result<Arc<Login>> {
        let _one = self.renewing.lock().await;
        let now = self.current();
        if !Arc::ptr_eq(&now, stale) {
            return Ok(now);
        }
        let fresh = Arc::new(self.login.login(&self.inner).await.map_err(dal_error)?);
        tracing::debug!("logged in to Swift again");
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }
}

fn with_token(parts: &http::request::Parts, body: Buffer, login: &Login) -> http::Request<Buffer> {
    let mut req = http::Request::from_parts(parts.clone(), body);
    req.headers_mut().insert("x-auth-token", login.token.clone());
    req
}

impl HttpTransport for SwiftAuth {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        let login = self.token().await?;
        // A `Buffer` is shared, not copied: keeping it for a second attempt is free.
        let (parts, body) = req.into_parts();
        let resp = self.inner.fetch(with_token(&parts, body.clone(), &login)).await?;
        if resp.status() != http::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        drop(resp);
        let login = self.renew(&login).await?;
        self.inner.fetch(with_token(&parts, body, &login)).await
    }
}

/// A failed login as OpenDAL's error, retryable where the failure is.
fn dal_error(e: io::Error) -> opendal::Error {
    let (kind, temporary) = match e.kind() {
        io::ErrorKind::PermissionDenied => (ErrorKind::PermissionDenied, false),
        io::ErrorKind::NetworkDown => (ErrorKind::Unexpected, true),
        _ => (ErrorKind::ConfigInvalid, false),
    };
    let err = opendal::Error::new(kind, "logging in to Swift").set_source(e);
    if temporary {
        err.set_temporary()
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(url: &str, version: u8) -> SwiftLogin {
        SwiftLogin { auth_url: url.into(), auth_version: version, interface: "public".into(), ..Default::default() }
    }

    #[test]
    fn the_auth_version_follows_the_url_unless_given() {
        assert_eq!(login("http://swift:8080/auth/v1.0", 0).version(), 1);
        assert_eq!(login("https://keystone:5000/v3/", 0).version(), 3);
        assert_eq!(login("https://keystone:5000/v3", 1).version(), 1);
    }

    #[test]
    fn a_v3_login_is_scoped_as_configured() {
        let mut l = login("https://k/v3", 3);
        l.username = "u".into();
        l.password = "p".into();
        l.project = Some("team".into());
        l.domain = Some(Name::Name("corp".into()));
        let body = l.v3_request();
        assert_eq!(body["auth"]["identity"]["password"]["user"]["domain"]["name"], "corp");
        assert_eq!(body["auth"]["scope"]["project"]["name"], "team");
        assert_eq!(body["auth"]["scope"]["project"]["domain"]["name"], "corp", "the user's domain by default");
        l.project_domain = Some(Name::Id("d42".into()));
        assert_eq!(l.v3_request()["auth"]["scope"]["project"]["domain"]["id"], "d42");
        l.project_id = Some("p1".into());
        assert_eq!(l.v3_request()["auth"]["scope"], serde_json::json!({ "project": { "id": "p1" } }));
        l.trust_id = Some("t1".into());
        assert_eq!(l.v3_request()["auth"]["scope"]["OS-TRUST:trust"]["id"], "t1");
        let unscoped = login("https://k/v3", 3).v3_request();
        assert!(unscoped["auth"].get("scope").is_none());
        assert_eq!(unscoped["auth"]["identity"]["password"]["user"]["domain"]["id"], "default");
    }

    #[test]
    fn the_endpoint_comes_from_the_catalog_by_interface_and_region() {
        let catalog: Vec<V3Service> = serde_json::from_value(serde_json::json!([
            { "type": "identity", "endpoints": [{ "interface": "public", "region": "a", "region_id": "a", "url": "http://k" }] },
            { "type": "object-store", "endpoints": [
                { "interface": "internal", "region": "a", "region_id": "a", "url": "http://a-internal" },
                { "interface": "public", "region": "a", "region_id": "a", "url": "http://a" },
                { "interface": "public", "region": "b", "region_id": "b", "url": "http://b" }
            ] }
        ]))
        .unwrap();
        let mut l = login("https://k/v3", 3);
        assert_eq!(l.endpoint(&catalog).as_deref(), Some("http://a"));
        l.region = Some("b".into());
        assert_eq!(l.endpoint(&catalog).as_deref(), Some("http://b"));
        l.interface = "internal".into();
        assert_eq!(l.endpoint(&catalog), None);
        l.region = None;
        assert_eq!(l.endpoint(&catalog).as_deref(), Some("http://a-internal"));
    }
}
