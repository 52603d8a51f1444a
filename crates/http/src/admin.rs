//! The admin API, `/api/v1`: JSON over HTTP for users, robots, teams, namespaces,
//! memberships and the audit log, described by the OpenAPI document it serves at
//! `/api/v1/openapi.json`. Callers sign in with Basic credentials on every request; the
//! rules of who may do what live in `berth_auth::admin`, this module only translates.

use crate::auth::{client_ip, credentials};
use crate::edge::json_response;
use crate::App;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use berth_auth::admin::{Acting, AdminError};
use berth_auth::{AuthError, Credentials, Principal};
use berth_metadata::{
    Actor, AuditQuery, Immutability, ImmutabilityRule, Member, MemberKind, Role, UserRecord, ROBOT_PREFIX,
};
use berth_registry::GcOptions;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::time::Duration;
use utoipa::{IntoParams, OpenApi, ToSchema};

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/me", get(me))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", get(get_user).patch(update_user).delete(delete_user))
        .route("/api/v1/robots", axum::routing::post(create_robot))
        .route("/api/v1/teams", get(list_teams).post(create_team))
        .route("/api/v1/teams/{name}", get(get_team).patch(update_team).delete(delete_team))
        .route("/api/v1/teams/{name}/members/{user}", put(add_team_member).delete(remove_team_member))
        .route("/api/v1/namespaces", get(list_namespaces).post(create_namespace))
        .route("/api/v1/namespaces/{name}", get(get_namespace).patch(update_namespace).delete(delete_namespace))
        .route("/api/v1/namespaces/{name}/members", get(list_members))
        .route("/api/v1/namespaces/{name}/members/{kind}/{member}", put(set_member).delete(remove_member))
        .route("/api/v1/namespaces/{name}/immutability", get(list_immutability).post(add_immutability))
        .route("/api/v1/namespaces/{name}/immutability/{id}", axum::routing::delete(remove_immutability))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/gc", axum::routing::post(run_gc))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Berth admin API", version = "1", description = "Users, robots, teams, namespaces, memberships and the audit log of a Berth registry."),
    paths(me, list_users, create_user, get_user, update_user, delete_user, create_robot, list_teams, create_team,
          get_team, update_team, delete_team, add_team_member, remove_team_member, list_namespaces, create_namespace, get_namespace,
          update_namespace, delete_namespace, list_members, set_member, remove_member, list_immutability,
          add_immutability, remove_immutability, audit, run_gc),
    modifiers(&BasicAuth),
    security(("basic" = []))
)]
struct ApiDoc;

struct BasicAuth;

impl utoipa::Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The OpenAPI document, built once.
fn document() -> &'static [u8] {
    static DOC: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().expect("the OpenAPI document serialises").into_bytes())
}

async fn openapi() -> Response {
    json_response(StatusCode::OK, document().to_vec())
}

// ---- errors ------------------------------------------------------------------------

/// Every error answer: a code a program can act on and a message for people.
#[derive(Serialize, ToSchema)]
struct ErrorBody {
    /// `UNAUTHORIZED`, `FORBIDDEN`, `NOT_FOUND`, `CONFLICT`, `INVALID` or `UNAVAILABLE`.
    code: &'static str,
    message: String,
}

struct Failure(StatusCode, &'static str, String);

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Failure {
        match e {
            AdminError::Forbidden(m) => Failure(StatusCode::FORBIDDEN, "FORBIDDEN", m),
            AdminError::NotFound(m) => Failure(StatusCode::NOT_FOUND, "NOT_FOUND", m),
            AdminError::Conflict(m) => Failure(StatusCode::CONFLICT, "CONFLICT", m),
            AdminError::Invalid(m) => invalid(m),
            AdminError::Auth(e) => e.into(),
        }
    }
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Failure {
        match e {
            AuthError::Unauthenticated(m) => Failure(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", m),
            e @ AuthError::TooManyAttempts { .. } => {
                Failure(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", e.to_string())
            }
            AuthError::BadRequest(m) => invalid(m),
            e @ AuthError::Backend(_) => {
                tracing::error!(error = %e, "admin API backend failure");
                Failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "the metadata database is unavailable, try again".into(),
                )
            }
        }
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, "INVALID", message.into())
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let Failure(status, code, message) = self;
        let mut resp = json_response(status, serde_json::to_vec(&ErrorBody { code, message }).unwrap_or_default());
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"berth\""));
        }
        resp
    }
}

type Answer = Result<Response, Failure>;

fn ok<T: Serialize>(status: StatusCode, body: &T) -> Answer {
    let mut resp = json_response(status, serde_json::to_vec(body).map_err(|e| invalid(e.to_string()))?);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn done() -> Answer {
    Ok(crate::empty_response(StatusCode::NO_CONTENT))
}

/// A JSON body, with a 400 in the API's own shape for anything malformed.
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("invalid request body: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Failure> {
    q.map(|Query(q)| q).map_err(|e| invalid(format!("invalid query: {}", e.body_text())))
}

// ---- who is calling ----------------------------------------------------------------

/// A signed-in caller of the admin API.
struct Caller(Acting);

impl FromRequestParts<App> for Caller {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Caller, Failure> {
        let auth = app.auth.as_ref().ok_or_else(|| Failure(StatusCode::NOT_FOUND, "NOT_FOUND", "not found".into()))?;
        let creds = credentials(&parts.headers, &parts.extensions)?;
        if matches!(creds, Some(Credentials::Bearer(_))) {
            return Err(AuthError::Unauthenticated("the admin API takes Basic credentials".into()).into());
        }
        let from = client_ip(&parts.extensions);
        let caller = auth.authenticate(creds, from).await?;
        match caller.principal {
            Principal::Anonymous => {
                return Err(AuthError::Unauthenticated("sign in to use the admin API".into()).into());
            }
            Principal::Workload { .. } => {
                let m = "a CI identity may push and pull, not use the admin API".into();
                return Err(Failure(StatusCode::FORBIDDEN, "FORBIDDEN", m));
            }
            Principal::User { .. } => {}
        }
        let actor = Actor::new(caller.principal.name(), from.to_string());
        Ok(Caller(Acting { principal: caller.principal, actor }))
    }
}

fn authenticator(app: &App) -> &berth_auth::Authenticator {
    app.auth.as_deref().expect("the Caller extractor admits requests only when authentication is on")
}

// ---- shapes ------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
struct User {
    name: String,
    admin: bool,
    robot: bool,
    /// When the account stops working (RFC 3339); robots only.
    #[schema(nullable = true)]
    expires_at: Option<String>,
}

impl From<UserRecord> for User {
    fn from(u: UserRecord) -> User {
        User { robot: u.is_robot(), admin: u.admin, expires_at: u.expires_at.map(rfc3339), name: u.name }
    }
}

fn rfc3339(millis: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[derive(Serialize, ToSchema)]
struct Me {
    name: String,
    admin: bool,
    robot: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")]
    name: String,
    /// Omitted for someone who signs in elsewhere (htpasswd, LDAP) but needs an account here.
    #[serde(default)]
    #[schema(min_length = 8)]
    password: Option<String>,
    #[serde(default)]
    admin: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserUpdate {
    #[serde(default)]
    #[schema(min_length = 8)]
    password: Option<String>,
    #[serde(default)]
    admin: Option<bool>,
}

#[derive(Serialize, ToSchema)]
struct UserPage {
    users: Vec<User>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Start after this name.
    after: Option<String>,
    /// At most this many entries (1 to 1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// A page's size: 1 to 1000, 100 if not given.
fn page_limit(limit: Option<u32>) -> Result<u32, Failure> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit must be 1 to 1000"));
    }
    Ok(limit)
}

/// Where a page starts and how long it is.
fn page(q: Result<Query<PageQuery>, QueryRejection>) -> Result<(String, u32), Failure> {
    let q = query(q)?;
    Ok((q.after.unwrap_or_default(), page_limit(q.limit)?))
}

/// The `next` cursor of a page that came back full.
fn next_after<T>(items: &[T], limit: u32, name: impl Fn(&T) -> &str) -> Option<String> {
    (items.len() == limit as usize).then(|| items.last().map(|i| name(i).to_owned())).flatten()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Grant {
    namespace: String,
    /// `reader`, `developer`, `maintainer` or `admin`.
    role: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRobot {
    /// The robot signs in as `robot$<name>`.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")]
    name: String,
    /// Lifetime in seconds (at most ten years).
    #[schema(minimum = 1, maximum = 315360000)]
    expires_in: u64,
    grants: Vec<Grant>,
}

#[derive(Serialize, ToSchema)]
struct RobotCreated {
    name: String,
    /// Shown this once: only a hash is kept.
    secret: String,
    expires_at: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Team {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")]
    name: String,
}

#[derive(Serialize, ToSchema)]
struct TeamPage {
    teams: Vec<Team>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct TeamDetail {
    name: String,
    members: Vec<String>,
}

#[derive(Serialize, ToSchema)]
struct Namespace {
    name: String,
    /// Anyone, signed in or not, may pull its repositories.
    public: bool,
    created_at: String,
}

impl From<berth_metadata::Namespace> for Namespace {
    fn from(n: berth_metadata::Namespace) -> Namespace {
        Namespace { name: n.name, public: n.public, created_at: rfc3339(n.created_at) }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewNamespace {
    /// As many components of a repository name as `berth.auth.namespacedepth` says.
    #[schema(pattern = "^[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*$")]
    name: String,
    #[serde(default)]
    public: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NamespaceUpdate {
    public: bool,
}

#[derive(Serialize, ToSchema)]
struct NamespacePage {
    namespaces: Vec<Namespace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct MemberView {
    /// `user` (people and robots) or `team`.
    kind: &'static str,
    name: String,
    role: &'static str,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    /// `reader`, `developer`, `maintainer` or `admin`.
    role: String,
}

#[derive(Serialize, ToSchema)]
struct AuditEvent {
    id: i64,
    at: String,
    actor: String,
    client: String,
    action: String,
    target: String,
    result: String,
    #[schema(nullable = true, value_type = Object)]
    detail: Option<serde_json::Value>,
}

#[derive(Serialize, ToSchema)]
struct AuditPage {
    events: Vec<AuditEvent>,
    /// Pass as `before` for older events; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditFilter {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    /// Events at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Events before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Events older than this id (paging).
    before: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

fn role(s: &str) -> Result<Role, Failure> {
    Role::parse(s).ok_or_else(|| invalid(format!("unknown role {s:?}: reader, developer, maintainer or admin")))
}

fn member_kind(s: &str) -> Result<MemberKind, Failure> {
    MemberKind::parse(s).ok_or_else(|| Failure(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no member kind {s:?}")))
}

// ---- handlers ----------------------------------------------------------------------

/// The signed-in caller.
#[utoipa::path(get, path = "/api/v1/me", tag = "account", responses(
    (status = 200, body = Me), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn me(Caller(by): Caller) -> Answer {
    let admin = matches!(by.principal, Principal::User { admin: true, .. });
    let name = by.principal.name().to_owned();
    ok(StatusCode::OK, &Me { robot: name.starts_with(ROBOT_PREFIX), name, admin })
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(PageQuery), responses(
    (status = 200, body = UserPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody)))]
async fn list_users(State(app): State<App>, Caller(by): Caller, q: Result<Query<PageQuery>, QueryRejection>) -> Answer {
    let (after, limit) = page(q)?;
    let users = authenticator(&app).users(&by, &after, limit).await?;
    let next = next_after(&users, limit, |u| &u.name);
    ok(StatusCode::OK, &UserPage { users: users.into_iter().map(User::from).collect(), next })
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = NewUser, responses(
    (status = 201, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_user(State(app): State<App>, Caller(by): Caller, bytes: Bytes) -> Answer {
    let new: NewUser = body(&bytes)?;
    let auth = authenticator(&app);
    auth.create_user(&by, &new.name, new.password.as_deref(), new.admin).await?;
    ok(StatusCode::CREATED, &User::from(auth.user(&by, &new.name).await?))
}

#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "users", params(("name" = String, Path)), responses(
    (status = 200, body = User), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn get_user(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>) -> Answer {
    ok(StatusCode::OK, &User::from(authenticator(&app).user(&by, &name).await?))
}

/// Changes a password (one's own, or anyone's as an administrator) or the administrator flag.
#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "users", params(("name" = String, Path)),
    request_body = UserUpdate, responses(
    (status = 200, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_user(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>, bytes: Bytes) -> Answer {
    let update: UserUpdate = body(&bytes)?;
    let auth = authenticator(&app);
    auth.update_user(&by, &name, update.password.as_deref(), update.admin).await?;
    ok(StatusCode::OK, &User::from(auth.user(&by, &name).await?))
}

/// Deletes a person or revokes a robot (`robot$<name>`), with every role it held.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users", params(("name" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_user(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>) -> Answer {
    authenticator(&app).delete_user(&by, &name).await?;
    done()
}

/// Creates a robot account for CI: scoped to namespaces and roles, expiring, its secret shown once.
#[utoipa::path(post, path = "/api/v1/robots", tag = "robots", request_body = NewRobot, responses(
    (status = 201, body = RobotCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_robot(State(app): State<App>, Caller(by): Caller, bytes: Bytes) -> Answer {
    let new: NewRobot = body(&bytes)?;
    let grants =
        new.grants.iter().map(|g| Ok((g.namespace.clone(), role(&g.role)?))).collect::<Result<Vec<_>, Failure>>()?;
    let lifetime = Duration::from_secs(new.expires_in);
    let robot = authenticator(&app).create_robot(&by, &new.name, lifetime, &grants).await?;
    ok(
        StatusCode::CREATED,
        &RobotCreated { name: robot.name, secret: robot.secret, expires_at: rfc3339(robot.expires_at) },
    )
}

#[utoipa::path(get, path = "/api/v1/teams", tag = "teams", params(PageQuery), responses(
    (status = 200, body = TeamPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody)))]
async fn list_teams(State(app): State<App>, Caller(by): Caller, q: Result<Query<PageQuery>, QueryRejection>) -> Answer {
    let (after, limit) = page(q)?;
    let teams = authenticator(&app).teams(&by, &after, limit).await?;
    let next = next_after(&teams, limit, |t| t);
    ok(StatusCode::OK, &TeamPage { teams: teams.into_iter().map(|name| Team { name }).collect(), next })
}

#[utoipa::path(post, path = "/api/v1/teams", tag = "teams", request_body = Team, responses(
    (status = 201, body = Team), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_team(State(app): State<App>, Caller(by): Caller, bytes: Bytes) -> Answer {
    let team: Team = body(&bytes)?;
    authenticator(&app).create_team(&by, &team.name).await?;
    ok(StatusCode::CREATED, &team)
}

#[utoipa::path(get, path = "/api/v1/teams/{name}", tag = "teams", params(("name" = String, Path)), responses(
    (status = 200, body = TeamDetail), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn get_team(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>) -> Answer {
    let members = authenticator(&app).team_members(&by, &name).await?;
    ok(StatusCode::OK, &TeamDetail { name, members })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct TeamUpdate {
    /// The directory (LDAP) group whose members the team mirrors at each sign-in; null
    /// to manage the team's members here.
    #[schema(nullable = true)]
    directory_group: Option<String>,
}

/// Makes a team mirror a directory group, or stop mirroring one.
#[utoipa::path(patch, path = "/api/v1/teams/{name}", tag = "teams", params(("name" = String, Path)),
    request_body = TeamUpdate, responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn update_team(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>, bytes: Bytes) -> Answer {
    let update: TeamUpdate = body(&bytes)?;
    authenticator(&app).set_team_directory_group(&by, &name, update.directory_group.as_deref()).await?;
    done()
}

#[utoipa::path(delete, path = "/api/v1/teams/{name}", tag = "teams", params(("name" = String, Path)), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_team(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>) -> Answer {
    authenticator(&app).delete_team(&by, &name).await?;
    done()
}

#[utoipa::path(put, path = "/api/v1/teams/{name}/members/{user}", tag = "teams",
    params(("name" = String, Path), ("user" = String, Path)), responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn add_team_member(
    State(app): State<App>,
    Caller(by): Caller,
    Path((team, user)): Path<(String, String)>,
) -> Answer {
    authenticator(&app).add_team_member(&by, &team, &user).await?;
    done()
}

#[utoipa::path(delete, path = "/api/v1/teams/{name}/members/{user}", tag = "teams",
    params(("name" = String, Path), ("user" = String, Path)), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_team_member(
    State(app): State<App>,
    Caller(by): Caller,
    Path((team, user)): Path<(String, String)>,
) -> Answer {
    authenticator(&app).remove_team_member(&by, &team, &user).await?;
    done()
}

/// Namespaces: all of them for administrators, else the public ones and the caller's own.
#[utoipa::path(get, path = "/api/v1/namespaces", tag = "namespaces", params(PageQuery), responses(
    (status = 200, body = NamespacePage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_namespaces(
    State(app): State<App>,
    Caller(by): Caller,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Answer {
    let (after, limit) = page(q)?;
    let (shown, next) = authenticator(&app).namespaces(&by, &after, limit).await?;
    ok(StatusCode::OK, &NamespacePage { namespaces: shown.into_iter().map(Namespace::from).collect(), next })
}

#[utoipa::path(post, path = "/api/v1/namespaces", tag = "namespaces", request_body = NewNamespace, responses(
    (status = 201, body = Namespace), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_namespace(State(app): State<App>, Caller(by): Caller, bytes: Bytes) -> Answer {
    let new: NewNamespace = body(&bytes)?;
    let auth = authenticator(&app);
    auth.create_namespace(&by, &new.name, new.public).await?;
    ok(StatusCode::CREATED, &Namespace::from(auth.namespace(&by, &new.name).await?))
}

#[utoipa::path(get, path = "/api/v1/namespaces/{name}", tag = "namespaces", params(("name" = String, Path)), responses(
    (status = 200, body = Namespace), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_namespace(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>) -> Answer {
    ok(StatusCode::OK, &Namespace::from(authenticator(&app).namespace(&by, &name).await?))
}

#[utoipa::path(patch, path = "/api/v1/namespaces/{name}", tag = "namespaces", params(("name" = String, Path)),
    request_body = NamespaceUpdate, responses(
    (status = 200, body = Namespace), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_namespace(
    State(app): State<App>,
    Caller(by): Caller,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Answer {
    let update: NamespaceUpdate = body(&bytes)?;
    let auth = authenticator(&app);
    auth.update_namespace(&by, &name, update.public).await?;
    ok(StatusCode::OK, &Namespace::from(auth.namespace(&by, &name).await?))
}

/// Deletes a namespace and its memberships; its repositories fall back to the registry's defaults.
#[utoipa::path(delete, path = "/api/v1/namespaces/{name}", tag = "namespaces", params(("name" = String, Path)), responses(
    (status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_namespace(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>) -> Answer {
    authenticator(&app).delete_namespace(&by, &name).await?;
    done()
}

#[utoipa::path(get, path = "/api/v1/namespaces/{name}/members", tag = "namespaces", params(("name" = String, Path)),
    responses((status = 200, body = Vec<MemberView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn list_members(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>) -> Answer {
    let members = authenticator(&app).members(&by, &name).await?;
    let view: Vec<MemberView> = members
        .into_iter()
        .map(|m| MemberView { kind: m.kind.as_str(), name: m.name, role: m.role.as_str() })
        .collect();
    ok(StatusCode::OK, &view)
}

/// Gives a user, robot or team a role in a namespace (replacing the role it had).
#[utoipa::path(put, path = "/api/v1/namespaces/{name}/members/{kind}/{member}", tag = "namespaces",
    params(("name" = String, Path), ("kind" = String, Path, description = "`user` or `team`"), ("member" = String, Path)),
    request_body = RoleBody, responses(
    (status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn set_member(
    State(app): State<App>,
    Caller(by): Caller,
    Path((namespace, kind, name)): Path<(String, String, String)>,
    bytes: Bytes,
) -> Answer {
    let kind = member_kind(&kind)?;
    let role = role(&body::<RoleBody>(&bytes)?.role)?;
    authenticator(&app).set_member(&by, &namespace, &Member { kind, name, role }).await?;
    done()
}

/// A tag immutability rule of a namespace: what was asked for (see `NewRule`), its id, and
/// where it comes from.
#[derive(Serialize, ToSchema)]
struct RuleView {
    id: i64,
    repositories: String,
    tags: String,
    except: Vec<String>,
    level: String,
    signatures: bool,
    /// From the configuration file (`berth.immutability`): not removable here.
    declared: bool,
}

/// What a rule covers and forbids.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRule {
    /// A pattern (`*`: any run of characters) on the repository name after `<namespace>/`.
    repositories: String,
    /// A pattern on tags, e.g. `v*`.
    tags: String,
    /// Patterns of tags the rule leaves out, e.g. `*-rc*`.
    #[serde(default)]
    except: Vec<String>,
    /// `move` (a covered tag keeps its manifest) or `delete` (it cannot be deleted either).
    #[serde(default = "move_level")]
    #[schema(default = "move")]
    level: String,
    /// Whether signature and attestation tags (`sha256-<hex>.sig`, `.att`, `.sbom`) are covered too.
    #[serde(default)]
    signatures: bool,
}

fn move_level() -> String {
    "move".into()
}

impl From<ImmutabilityRule> for RuleView {
    fn from(r: ImmutabilityRule) -> RuleView {
        RuleView {
            id: r.id.unwrap_or_default(),
            repositories: r.repositories,
            tags: r.tags,
            except: r.except,
            level: r.level.as_str().into(),
            signatures: r.signatures,
            declared: r.declared,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/namespaces/{name}/immutability", tag = "namespaces", params(("name" = String, Path)),
    responses((status = 200, body = Vec<RuleView>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn list_immutability(State(app): State<App>, Caller(by): Caller, Path(name): Path<String>) -> Answer {
    let rules = authenticator(&app).immutability_rules(&by, &name).await?;
    ok(StatusCode::OK, &rules.into_iter().map(RuleView::from).collect::<Vec<_>>())
}

/// Makes the namespace's tags matching the rule immutable: moving them to another
/// manifest (and at level `delete` deleting them) is refused with `DENIED`.
#[utoipa::path(post, path = "/api/v1/namespaces/{name}/immutability", tag = "namespaces", params(("name" = String, Path)),
    request_body = NewRule, responses((status = 201, body = RuleView), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn add_immutability(
    State(app): State<App>,
    Caller(by): Caller,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Answer {
    let view: NewRule = body(&bytes)?;
    let level = Immutability::parse(&view.level)
        .ok_or_else(|| invalid(format!("invalid level {:?}: `move` or `delete`", view.level)))?;
    let rule = ImmutabilityRule {
        id: None,
        namespace: name,
        repositories: view.repositories,
        tags: view.tags,
        except: view.except,
        level,
        signatures: view.signatures,
        declared: false,
    };
    let id = authenticator(&app).add_immutability_rule(&by, &rule).await?;
    ok(StatusCode::CREATED, &RuleView::from(ImmutabilityRule { id: Some(id), ..rule }))
}

#[utoipa::path(delete, path = "/api/v1/namespaces/{name}/immutability/{id}", tag = "namespaces",
    params(("name" = String, Path), ("id" = String, Path, description = "the rule's id")), responses((status = 204),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn remove_immutability(
    State(app): State<App>,
    Caller(by): Caller,
    Path((name, id)): Path<(String, String)>,
) -> Answer {
    // Not a number: no such rule, answered like any other unknown one.
    let id = id.parse().unwrap_or(-1);
    authenticator(&app).remove_immutability_rule(&by, &name, id).await?;
    done()
}

#[utoipa::path(delete, path = "/api/v1/namespaces/{name}/members/{kind}/{member}", tag = "namespaces",
    params(("name" = String, Path), ("kind" = String, Path, description = "`user` or `team`"), ("member" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    (status = 404, body = ErrorBody)))]
async fn remove_member(
    State(app): State<App>,
    Caller(by): Caller,
    Path((namespace, kind, name)): Path<(String, String, String)>,
) -> Answer {
    let kind = member_kind(&kind)?;
    authenticator(&app).remove_member(&by, &namespace, kind, &name).await?;
    done()
}

/// Audit events, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditFilter), responses(
    (status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 403, body = ErrorBody)))]
async fn audit(State(app): State<App>, Caller(by): Caller, q: Result<Query<AuditFilter>, QueryRejection>) -> Answer {
    let f = query(q)?;
    let time = |s: &Option<String>, key: &str| -> Result<Option<i64>, Failure> {
        s.as_deref()
            .map(|s| {
                let t = humantime::parse_rfc3339_weak(s).map_err(|e| invalid(format!("{key}: {e}")))?;
                Ok(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
            })
            .transpose()
    };
    let limit = page_limit(f.limit)?;
    let q = AuditQuery {
        actor: f.actor.clone(),
        action: f.action.clone(),
        target: f.target.clone(),
        since: time(&f.since, "since")?,
        until: time(&f.until, "until")?,
        before: f.before,
        limit,
    };
    let events = authenticator(&app).audit(&by, &q).await?;
    let next_before = (events.len() == limit as usize).then(|| events.last().map(|e| e.id)).flatten();
    let events = events
        .into_iter()
        .map(|e| AuditEvent {
            id: e.id,
            at: rfc3339(e.at),
            detail: e.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()),
            actor: e.actor,
            client: e.client,
            action: e.action,
            target: e.target,
            result: e.result,
        })
        .collect();
    ok(StatusCode::OK, &AuditPage { events, next_before })
}

/// What a garbage-collection pass is asked to do.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields, default)]
struct GcRequest {
    /// Report what would be freed; change nothing.
    dry_run: bool,
    /// Also list the store for objects without a record (a full listing).
    scan_storage: bool,
}

/// Runs one garbage-collection pass now, with the configured grace period, and answers
/// with its report: links removed, blobs freed (digest and size, the first thousand
/// listed), bytes, failures left for the next pass.
#[utoipa::path(post, path = "/api/v1/gc", tag = "maintenance", request_body = GcRequest, responses(
    (status = 200, description = "The pass's report"), (status = 400, body = ErrorBody),
    (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn run_gc(State(app): State<App>, Caller(by): Caller, bytes: Bytes) -> Answer {
    authenticator(&app).require_admin(&by)?;
    let req: GcRequest = if bytes.is_empty() { GcRequest::default() } else { body(&bytes)? };
    let opts = GcOptions {
        dry_run: req.dry_run,
        scan_storage: req.scan_storage,
        ..GcOptions::configured(app.registry.settings())
    };
    let report = app.registry.collect_garbage(&opts).await.map_err(|e| {
        Failure(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", format!("garbage collection: {}", e.message))
    })?;
    ok(StatusCode::OK, &report)
}
