//! Configuration: registry:2's `config.yml` keys and `REGISTRY_*` environment variables,
//! plus Berth's own settings under `berth:`.
//!
//! Every section denies unknown keys, and errors name the key's full path, so a typo
//! fails at start-up instead of being silently ignored.

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// registry:2's config version (`0.1`); accepted for compatibility.
    #[serde(default)]
    pub version: Option<Value>,
    #[serde(default)]
    pub log: Log,
    #[serde(default)]
    pub http: Http,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub auth: Auth,
    /// registry:2's health checks; Berth's readiness is `GET /v2/`, so these are
    /// accepted and have no effect.
    #[serde(default)]
    pub health: Option<Value>,
    #[serde(default)]
    pub berth: Berth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// error, warn, info or debug (registry:2's default: info).
    pub level: Option<String>,
    /// text, json or logstash (logstash is written as json).
    pub formatter: Option<String>,
    /// Static fields registry:2 adds to each line; accepted for compatibility.
    #[serde(default)]
    pub fields: Option<Value>,
    #[serde(default)]
    pub accesslog: AccessLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Listen address, `host:port` or `:port` (all interfaces).
    pub addr: Option<String>,
    /// Externally visible base URL; accepted for compatibility (Location headers are
    /// built from the request's Host, or relative with `relativeurls`).
    pub host: Option<String>,
    #[serde(default)]
    pub relativeurls: bool,
    /// registry:2 signs upload state with it; Berth keeps upload state server-side, so
    /// it is accepted and unused.
    pub secret: Option<String>,
    /// Headers added to every response.
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// `http.tls`: serve HTTPS (and HTTP/2 through ALPN) with these files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundles of CAs whose client certificates are accepted (mTLS).
    #[serde(default)]
    pub clientcas: Vec<PathBuf>,
    /// `tls1.2` (default) or `tls1.3`; older versions are never offered.
    pub minimumtls: Option<String>,
    /// registry:2's cipher-suite list; rustls offers only modern suites, so this is
    /// accepted and has no effect.
    #[serde(default)]
    pub ciphersuites: Option<Value>,
    /// registry:2's ACME settings: not supported, refused at start-up if set.
    #[serde(default)]
    pub letsencrypt: Option<Value>,
}

/// `auth`: registry:2's authentication drivers (one at a time).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub htpasswd: Option<Htpasswd>,
    pub token: Option<ExternalToken>,
    /// registry:2's test-only driver: refused at start-up.
    #[serde(default)]
    pub silly: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Htpasswd {
    /// The realm of the `Basic` challenge.
    pub realm: Option<String>,
    /// An htpasswd file with bcrypt entries (`htpasswd -Bbn user password`).
    pub path: PathBuf,
}

/// Tokens from an external token server, as registry:2's `auth.token`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalToken {
    /// Where clients get tokens (the challenge's `realm`).
    pub realm: String,
    /// The token audience this registry accepts (the challenge's `service`).
    pub service: String,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// PEM certificates whose keys sign tokens (by `x5c` chain or by key id).
    pub rootcertbundle: Option<PathBuf>,
    /// A JWKS file with the signing keys.
    pub jwks: Option<PathBuf>,
    /// registry:2's redirect of `/v2/` challenges: accepted, no effect.
    #[serde(default)]
    pub autoredirect: Option<Value>,
    #[serde(default)]
    pub autoredirectpath: Option<Value>,
    #[serde(default)]
    pub signingalgorithms: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    #[serde(default)]
    pub filesystem: Filesystem,
    #[serde(default)]
    pub delete: Delete,
    #[serde(default)]
    pub maintenance: Maintenance,
    /// registry:2's descriptor cache; Berth reads descriptors from its metadata store,
    /// so this is accepted and has no effect.
    #[serde(default)]
    pub cache: Option<Value>,
    #[serde(default)]
    pub redirect: Redirect,
    /// Blobs in an S3 bucket (or an S3-compatible store) instead of the filesystem.
    pub s3: Option<S3>,
    /// Blobs in an Azure Blob Storage container instead of the filesystem.
    pub azure: Option<Azure>,
    /// Blobs in a Google Cloud Storage bucket instead of the filesystem.
    pub gcs: Option<Gcs>,
    /// Blobs in an OpenStack Swift container instead of the filesystem.
    pub swift: Option<Swift>,
}

/// registry:2's `storage.swift`, key for key: TempAuth (v1) or Keystone v3 password
/// authentication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Swift {
    /// `https://swift.example.com/auth/v1.0` (TempAuth) or
    /// `https://keystone.example.com/v3` (Keystone).
    #[serde(deserialize_with = "scalar")]
    pub authurl: String,
    #[serde(deserialize_with = "scalar")]
    pub username: String,
    #[serde(deserialize_with = "secret")]
    pub password: Secret,
    #[serde(deserialize_with = "scalar")]
    pub container: String,
    /// 1 or 3; 0 or absent: from `authurl` (`.../v3` is Keystone v3, else v1).
    #[serde(default)]
    pub authversion: u8,
    /// The project (Keystone's name for a tenant) the token is scoped to, by name or id.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub tenant: Option<String>,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub tenantid: Option<String>,
    /// The user's domain, by name or id.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub domain: Option<String>,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub domainid: Option<String>,
    /// The project's domain, when it is not the user's.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub tenantdomain: Option<String>,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub tenantdomainid: Option<String>,
    /// A trust to scope the token to instead of a project.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub trustid: Option<String>,
    /// The catalog's region to take the object-store endpoint from; absent: the first.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub region: Option<String>,
    /// The catalog's interface: `public` (the default), `internal` or `admin`.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub endpointtype: Option<String>,
    /// Keys go under `<prefix>/files/`, where registry:2 keeps them.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub prefix: Option<String>,
    /// The segment size of large objects, in bytes (at least 5 MiB is used).
    #[serde(default = "default_swift_chunksize")]
    pub chunksize: u64,
    /// The TempURL key: with it, blob downloads are redirected to TempURLs (and Berth
    /// sets it on the account, or with `tempurlcontainerkey` on the container).
    #[serde(default, deserialize_with = "optional_secret")]
    pub secretkey: Option<Secret>,
    #[serde(default)]
    pub tempurlcontainerkey: bool,
    /// Accepted for registry:2 compatibility, with no effect: TLS is always verified,
    /// TempURLs are made for `GET` only, and `accesskey` was HP Cloud's.
    #[serde(default)]
    pub insecureskipverify: Option<Value>,
    #[serde(default)]
    pub tempurlmethods: Option<Value>,
    #[serde(default)]
    pub accesskey: Option<Value>,
}

/// registry:2's default segment size on Swift.
fn default_swift_chunksize() -> u64 {
    20 << 20
}

/// registry:2's `storage.gcs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gcs {
    #[serde(deserialize_with = "scalar")]
    pub bucket: String,
    /// A service account key file (JSON); without it the standard chain
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, the VM's metadata server).
    #[serde(default, deserialize_with = "optional_scalar")]
    pub keyfile: Option<String>,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub rootdirectory: Option<String>,
    /// The part size of uploads, in bytes.
    #[serde(default = "default_chunksize")]
    pub chunksize: u64,
    /// Berth's addition: another endpoint of the JSON API (an emulator), used without
    /// credentials.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub endpoint: Option<String>,
}

/// registry:2's `storage.azure` (shared-key authentication).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Azure {
    #[serde(deserialize_with = "scalar")]
    pub accountname: String,
    #[serde(deserialize_with = "secret")]
    pub accountkey: Secret,
    #[serde(deserialize_with = "scalar")]
    pub container: String,
    /// The endpoint's domain: `https://<accountname>.blob.<realm>`.
    #[serde(default = "default_azure_realm", deserialize_with = "scalar")]
    pub realm: String,
    /// The account's blob endpoint in full (Distribution 3's key), e.g. an emulator's;
    /// overrides `realm`.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub serviceurl: Option<String>,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub rootdirectory: Option<String>,
    /// Accepted for Distribution 3 compatibility, with no effect (its copy tuning).
    #[serde(default)]
    pub copy_status_poll_max_retry: Option<Value>,
    #[serde(default)]
    pub copy_status_poll_delay: Option<Value>,
}

fn default_azure_realm() -> String {
    "core.windows.net".into()
}

/// registry:2's `storage.redirect`: blob downloads from an object store are answered
/// with a redirect to a short-lived presigned URL unless `disable`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default)]
    pub disable: bool,
}

/// registry:2's `storage.s3`, key for key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    #[serde(deserialize_with = "scalar")]
    pub bucket: String,
    #[serde(deserialize_with = "scalar")]
    pub region: String,
    /// A custom endpoint (MinIO, Ceph RGW, ...), as a URL or a host.
    #[serde(default, deserialize_with = "optional_scalar")]
    pub regionendpoint: Option<String>,
    /// Static credentials; without them the standard AWS chain is asked (environment,
    /// profile files, web identity, instance metadata).
    #[serde(default, deserialize_with = "optional_scalar")]
    pub accesskey: Option<String>,
    #[serde(default, deserialize_with = "optional_secret")]
    pub secretkey: Option<Secret>,
    #[serde(default, deserialize_with = "optional_secret")]
    pub sessiontoken: Option<Secret>,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub rootdirectory: Option<String>,
    #[serde(default)]
    pub encrypt: bool,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub keyid: Option<String>,
    /// https for an endpoint given as a host.
    #[serde(default = "yes")]
    pub secure: bool,
    /// Path-style requests (`host/bucket/key`); `false`: virtual-host style.
    #[serde(default = "yes")]
    pub forcepathstyle: bool,
    /// The part size of multipart uploads, in bytes (at least 5 MiB).
    #[serde(default = "default_chunksize")]
    pub chunksize: u64,
    #[serde(default, deserialize_with = "optional_scalar")]
    pub storageclass: Option<String>,
    /// Accepted for registry:2 compatibility, with no effect: TLS is always verified,
    /// requests are always signed with SigV4, and these tune registry:2's own copier.
    #[serde(default)]
    pub skipverify: Option<Value>,
    #[serde(default)]
    pub v4auth: Option<Value>,
    #[serde(default)]
    pub multipartcopychunksize: Option<Value>,
    #[serde(default)]
    pub multipartcopymaxconcurrency: Option<Value>,
    #[serde(default)]
    pub multipartcopythresholdsize: Option<Value>,
    #[serde(default)]
    pub useragent: Option<Value>,
    #[serde(default)]
    pub objectacl: Option<Value>,
    #[serde(default)]
    pub loglevel: Option<Value>,
}

fn default_chunksize() -> u64 {
    10 << 20
}

/// A string that environment variables may have turned into another YAML scalar (a
/// bucket named `2024`, a key of digits).
fn scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(serde::de::Error::custom(format!("expected a string, not {other:?}"))),
    }
}

fn optional_scalar<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    scalar(d).map(Some)
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    scalar(d).map(Secret)
}

fn optional_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    scalar(d).map(|s| Some(Secret(s)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub rootdirectory: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    #[serde(default)]
    pub uploadpurging: UploadPurging,
    #[serde(default)]
    pub readonly: ReadOnly,
}

/// registry:2's maintenance mode: every write answers 405.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOnly {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadPurging {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long an upload session may sit idle before it is purged.
    #[serde(default = "default_age", with = "duration")]
    pub age: Duration,
    /// How often idle sessions are looked for.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    #[serde(default)]
    pub dryrun: bool,
}

impl Default for UploadPurging {
    fn default() -> Self {
        UploadPurging { enabled: true, age: default_age(), interval: default_interval(), dryrun: false }
    }
}

fn yes() -> bool {
    true
}

fn default_age() -> Duration {
    Duration::from_secs(168 * 3600)
}

fn default_interval() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Settings registry:2 does not have.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Berth {
    #[serde(default)]
    pub database: Database,
    #[serde(default)]
    pub manifests: Manifests,
    #[serde(default)]
    pub blobs: Blobs,
    #[serde(default)]
    pub uploads: Uploads,
    /// Allow listening beyond loopback without authentication.
    #[serde(default)]
    pub allowunauthenticated: bool,
    #[serde(default)]
    pub http: BerthHttp,
    #[serde(default)]
    pub auth: BerthAuth,
    /// Tag immutability rules declared here (the admin API adds more per namespace).
    #[serde(default)]
    pub immutability: Vec<ImmutabilityRule>,
    #[serde(default)]
    pub gc: Gc,
}

/// `berth.gc`: online garbage collection inside `berth serve`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gc {
    pub enabled: bool,
    /// Time between passes (each instance runs its own; they share the work).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How long a blob no manifest references stays linked to its repository (layers
    /// pushed for a manifest that comes later), and how long an object found in
    /// storage without a record stays.
    #[serde(with = "duration")]
    pub grace: Duration,
    /// How often a pass also lists the store for objects without a record.
    #[serde(with = "duration")]
    pub storagescan: Duration,
    /// How long a writer may take from holding a digest (just before it publishes the
    /// bytes) to recording them; after that the hold counts as abandoned (a crash) and
    /// a late writer's commit fails, which its client retries.
    #[serde(with = "duration")]
    pub holdlease: Duration,
    /// Namespaces whose untagged manifests are collected (elsewhere they are kept, for
    /// digest pinning).
    pub untagged: Vec<UntaggedPolicy>,
}

/// `berth.gc.untagged[]`: manifests of `namespace` (`"*"`: every repository) that no
/// tag names, that are no index's child and no referrer of a manifest there, go once
/// they were pushed longer than `grace` ago.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UntaggedPolicy {
    #[serde(deserialize_with = "scalar")]
    pub namespace: String,
    #[serde(with = "duration")]
    pub grace: Duration,
}

impl Default for Gc {
    fn default() -> Self {
        Gc {
            enabled: true,
            interval: Duration::from_secs(3600),
            grace: Duration::from_secs(24 * 3600),
            storagescan: Duration::from_secs(24 * 3600),
            holdlease: Duration::from_secs(3600),
            untagged: Vec::new(),
        }
    }
}

/// `berth.immutability[]`: the tags matching `tags` (less `except`) in the repositories of
/// `namespace` matching `repositories` keep their manifest (`level: move`) or also
/// cannot be deleted (`level: delete`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImmutabilityRule {
    #[serde(deserialize_with = "scalar")]
    pub namespace: String,
    #[serde(default = "any_name")]
    pub repositories: String,
    pub tags: String,
    #[serde(default)]
    pub except: Vec<String>,
    #[serde(default = "move_level")]
    pub level: String,
    /// Whether signature and attestation tags are covered too.
    #[serde(default)]
    pub signatures: bool,
}

fn any_name() -> String {
    "*".into()
}

fn move_level() -> String {
    "move".into()
}

/// Berth's own authentication and authorization settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BerthAuth {
    /// Berth's built-in token service: clients are challenged with `Bearer` and fetch
    /// short-lived tokens from `/auth/token` with their password.
    pub token: BuiltinToken,
    /// What callers may do with repositories that belong to no namespace.
    pub defaultaccess: DefaultAccess,
    /// An administrator created at first start if no user of that name exists.
    pub admin: Option<BootstrapAdmin>,
    /// Failed logins allowed per user and per client address within `window`.
    pub loginlimit: LoginLimit,
    /// How long a verified password is remembered, so that bcrypt and argon2 (slow on
    /// purpose) do not run on every request.
    #[serde(with = "duration")]
    pub credentialcache: Duration,
    /// How many leading components of a repository name are its namespace (1: `team`
    /// in `team/app`; 2: `org/team` in `org/team/app`).
    pub namespacedepth: usize,
    /// Sign-in against an LDAP directory or Active Directory, for users with no
    /// password kept here.
    pub ldap: Option<Ldap>,
    /// CI systems whose OIDC ID tokens sign pipelines in (`docker login -u <name> -p
    /// "$ID_TOKEN"`), with the rules that say what each pipeline may do.
    pub federation: Vec<Federation>,
    /// People sign in through an OpenID Connect provider (browser flow and `berth login`).
    pub oidc: Option<Oidc>,
}

impl Default for BerthAuth {
    fn default() -> Self {
        BerthAuth {
            token: BuiltinToken::default(),
            defaultaccess: DefaultAccess::default(),
            admin: None,
            loginlimit: LoginLimit::default(),
            credentialcache: Duration::from_secs(60),
            namespacedepth: 1,
            ldap: None,
            federation: Vec::new(),
            oidc: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinToken {
    pub enabled: bool,
    /// The audience of issued tokens and the challenge's `service`.
    pub service: String,
    /// The `iss` of issued tokens.
    pub issuer: String,
    /// Lifetime of access tokens.
    #[serde(with = "duration")]
    pub expiration: Duration,
    /// Lifetime of refresh tokens (`offline_token=true`).
    #[serde(with = "duration")]
    pub refreshexpiration: Duration,
    /// The token endpoint as clients reach it; default: `/auth/token` on the host the
    /// client used.
    pub realm: Option<String>,
}

impl Default for BuiltinToken {
    fn default() -> Self {
        BuiltinToken {
            enabled: false,
            service: "berth".into(),
            issuer: "berth".into(),
            expiration: Duration::from_secs(300),
            refreshexpiration: Duration::from_secs(7 * 24 * 3600),
            realm: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultAccess {
    /// `none` or `pull`.
    pub anonymous: String,
    /// `none`, `pull`, `push` or `delete` (registry:2 lets every signed-in user do
    /// everything, which `delete` keeps).
    pub authenticated: String,
}

impl Default for DefaultAccess {
    fn default() -> Self {
        DefaultAccess { anonymous: "none".into(), authenticated: "delete".into() }
    }
}

/// `berth.auth.ldap`: where the directory is and how users and groups are found in it.
/// Either `binddn` + `bindpassword` (search for the user as a service account) or
/// `userdn` (bind directly as the user); what is valid together is checked when the
/// directory is set up, not here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ldap {
    /// `ldap://host:389` or `ldaps://host:636`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// A PEM CA bundle for LDAPS and StartTLS instead of the system's roots.
    pub cafile: Option<PathBuf>,
    pub binddn: Option<String>,
    pub bindpassword: Option<Secret>,
    /// The DN to bind as, with `{username}` where the name goes (direct bind).
    pub userdn: Option<String>,
    /// Where users are searched.
    #[serde(default)]
    pub basedn: String,
    #[serde(default = "default_user_filter")]
    pub userfilter: String,
    /// Where groups are searched; without it no groups are read.
    pub groupbasedn: Option<String>,
    #[serde(default = "default_group_filter")]
    pub groupfilter: String,
    /// The attribute of a group entry that names the group.
    #[serde(default = "default_group_attribute")]
    pub groupattribute: String,
    /// The bound on connecting and on each directory operation.
    #[serde(with = "duration", default = "default_ldap_timeout")]
    pub timeout: Duration,
}

fn default_user_filter() -> String {
    "(uid={username})".into()
}

fn default_group_filter() -> String {
    "(member={dn})".into()
}

fn default_group_attribute() -> String {
    "cn".into()
}

fn default_ldap_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `berth.auth.federation[]`: one CI system's OIDC issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    /// The user name pipelines sign in with (`github`, `gitlab`, `k8s-prod`).
    pub name: String,
    /// The issuer, exactly as its tokens' `iss` claim says it.
    pub issuer: String,
    /// The audience the tokens must be issued for.
    pub audience: String,
    /// The issuer's JWKS; default: the one its discovery document names.
    pub jwksuri: Option<String>,
    /// The bound on each request to the issuer.
    #[serde(with = "duration", default = "default_federation_timeout")]
    pub timeout: Duration,
    pub rules: Vec<FederationRule>,
}

/// A token whose claims all match `claims` (exact values, or patterns with `*`) gets
/// the `grants`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationRule {
    pub claims: std::collections::BTreeMap<String, String>,
    pub grants: Vec<FederationGrant>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationGrant {
    pub namespace: String,
    /// `reader`, `developer`, `maintainer` or `admin`.
    pub role: String,
}

fn default_federation_timeout() -> Duration {
    Duration::from_secs(5)
}

/// `berth.auth.oidc`: an OpenID Connect provider people sign in through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Oidc {
    /// The provider, exactly as its ID tokens' `iss` claim says it.
    pub issuer: String,
    /// The registry's client at the provider, for the browser flow.
    pub clientid: String,
    pub clientsecret: Option<Secret>,
    /// Where the provider sends browsers back (registered at the provider); default:
    /// `/auth/oidc/callback` on the host the browser used.
    pub redirecturl: Option<String>,
    /// A public client for `berth login` (loopback redirects); default: `clientid`.
    pub cliclientid: Option<String>,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The claim that names the user.
    #[serde(default = "default_oidc_username_claim")]
    pub usernameclaim: String,
    /// The claim listing the user's groups, mirrored onto teams.
    #[serde(default = "default_oidc_groups_claim")]
    pub groupsclaim: String,
    /// The bound on each request to the provider.
    #[serde(with = "duration", default = "default_federation_timeout")]
    pub timeout: Duration,
}

fn default_oidc_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}

fn default_oidc_username_claim() -> String {
    "preferred_username".into()
}

fn default_oidc_groups_claim() -> String {
    "groups".into()
}

/// `scheme://user:password@host/...` as `scheme://user:<redacted>@host/...`.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@').and_then(|at| rest[..at].find(':').map(|colon| (colon, at))) {
        Some((colon, at)) => format!("{scheme}://{}:<redacted>{}", &rest[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

/// A password in the configuration: its `Debug` form (logs, `check-config`) hides it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapAdmin {
    #[serde(deserialize_with = "scalar")]
    pub username: String,
    /// Read as a scalar: `REGISTRY_BERTH_AUTH_ADMIN_PASSWORD=12345678` is a password, not
    /// a number.
    #[serde(deserialize_with = "secret")]
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimit {
    pub failures: u32,
    #[serde(with = "duration")]
    pub window: Duration,
}

impl Default for LoginLimit {
    fn default() -> Self {
        LoginLimit { failures: 10, window: Duration::from_secs(60) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BerthHttp {
    /// The longest a request body may go without sending a byte before the request fails
    /// (a stalled or vanished client); the upload session stays resumable.
    #[serde(with = "duration")]
    pub bodytimeout: Duration,
    /// From the first byte of a request to the end of its head (slowloris).
    #[serde(with = "duration")]
    pub headertimeout: Duration,
    /// How long a keep-alive connection with no request in flight stays open.
    #[serde(with = "duration")]
    pub idletimeout: Duration,
    /// How long a response may wait for the client to take any bytes.
    #[serde(with = "duration")]
    pub sendtimeout: Duration,
    /// The largest request head (request line plus headers), in bytes.
    pub maxheaderbytes: usize,
    /// Connections served at once; more wait in the kernel's accept queue.
    pub maxconnections: usize,
    /// Addresses or CIDR ranges of reverse proxies whose `X-Forwarded-*` headers are
    /// believed; from anyone else they are ignored.
    pub trustedproxies: Vec<String>,
    /// How often certificate files are checked for changes.
    #[serde(with = "duration")]
    pub tlsreload: Duration,
    /// With `http.tls.clientcas`: `required` (registry:2's behaviour: no certificate, no
    /// connection) or `optional` (a client without one signs in as usual).
    pub clientcertificates: String,
}

impl Default for BerthHttp {
    fn default() -> Self {
        BerthHttp {
            bodytimeout: Duration::from_secs(60),
            headertimeout: Duration::from_secs(10),
            clientcertificates: "required".into(),
            idletimeout: Duration::from_secs(60),
            sendtimeout: Duration::from_secs(60),
            maxheaderbytes: 64 * 1024,
            maxconnections: 4096,
            trustedproxies: Vec::new(),
            tlsreload: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blobs {
    /// Largest blob accepted, in bytes (default: no limit).
    pub maxsize: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uploads {
    /// Open upload sessions allowed in the whole registry.
    pub maxsessions: u64,
    /// Open upload sessions allowed in one repository.
    pub maxsessionsperrepository: u64,
    /// Age after which staged bytes without a session (a spool, part objects), or a
    /// session whose bytes are gone, are a crash leftover and removed.
    #[serde(with = "duration")]
    pub orphangrace: Duration,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads { maxsessions: 10_000, maxsessionsperrepository: 1_000, orphangrace: Duration::from_secs(3600) }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// sqlx URL of the metadata database; default `sqlite://<root>/berth/metadata.db`.
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifests {
    /// Largest manifest accepted, in bytes (default 4 MiB).
    pub maxsize: Option<usize>,
}

/// Go-style durations as registry:2 writes them (`168h`, `10m`, `1h30m`).
mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

pub const DEFAULT_ADDR: &str = "127.0.0.1:5000";
pub const DEFAULT_ROOT: &str = "data";

impl Config {
    /// Loads the YAML file (if any), then applies `REGISTRY_*` variables from `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Config> {
        let mut tree = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                serde_yaml_ng::from_str::<Value>(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Value::Mapping(Mapping::new()),
        };
        if tree.is_null() {
            tree = Value::Mapping(Mapping::new());
        }
        for (key, value) in env {
            if let Some(path) = key.strip_prefix("REGISTRY_") {
                apply_env(&mut tree, &key, path, &value)?;
            }
        }
        serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            anyhow::anyhow!("invalid configuration at `{path}`: {}", e.into_inner())
        })
    }

    pub fn root(&self) -> PathBuf {
        self.storage.filesystem.rootdirectory.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }

    pub fn database_url(&self) -> String {
        self.berth
            .database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.root().join("berth/metadata.db").display()))
    }

    /// The database URL with its password hidden, for messages and `check-config`.
    pub fn database_url_redacted(&self) -> String {
        redact_password(&self.database_url())
    }

    /// The listen address; `:5000` means every interface, as in registry:2.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        let addr = self.http.addr.as_deref().unwrap_or(DEFAULT_ADDR);
        let full = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_owned() };
        let full = full.replacen("localhost:", "127.0.0.1:", 1);
        full.parse().with_context(|| format!("invalid `http.addr` {addr:?}: expected host:port or :port"))
    }

    pub fn log_level(&self) -> anyhow::Result<&str> {
        let level = self.log.level.as_deref().unwrap_or("info");
        match level {
            "error" | "warn" | "info" | "debug" | "trace" => Ok(level),
            "warning" => Ok("warn"),
            "panic" | "fatal" => Ok("error"),
            _ => bail!("invalid `log.level` {level:?}: expected error, warn, info or debug"),
        }
    }

    pub fn json_logs(&self) -> anyhow::Result<bool> {
        match self.log.formatter.as_deref().unwrap_or("text") {
            "text" => Ok(false),
            "json" | "logstash" => Ok(true),
            other => bail!("invalid `log.formatter` {other:?}: expected text, json or logstash"),
        }
    }
}

/// Sets `storage.filesystem.rootdirectory` from `REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY`:
/// each `_` descends one level, as registry:2 maps its variables.
fn apply_env(tree: &mut Value, key: &str, path: &str, value: &str) -> anyhow::Result<()> {
    let parts: Vec<String> = path.split('_').map(str::to_ascii_lowercase).collect();
    if parts.iter().any(String::is_empty) {
        bail!("invalid environment variable {key}");
    }
    let mut node = tree;
    for part in &parts[..parts.len() - 1] {
        let map = node.as_mapping_mut().with_context(|| format!("{key}: `{part}` is not a section"))?;
        let child = map.entry(Value::String(part.clone())).or_insert(Value::Null);
        *child = match std::mem::take(child) {
            Value::Null => Value::Mapping(Mapping::new()),
            // `REGISTRY_AUTH=htpasswd` named the driver; its settings go inside it.
            Value::String(driver) => driver_section(driver),
            other => other,
        };
        node = child;
    }
    let map = node.as_mapping_mut().with_context(|| format!("{key}: not inside a section"))?;
    let leaf = Value::String(parts[parts.len() - 1].clone());
    // Values are YAML scalars, so `true` and `5000` get their natural types.
    let parsed = serde_yaml_ng::from_str::<Value>(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    let parsed = if parsed.is_null() { Value::String(value.to_owned()) } else { parsed };
    match (map.get_mut(&leaf), parsed) {
        // The driver's name after its settings (`REGISTRY_AUTH_HTPASSWD_PATH`, then
        // `REGISTRY_AUTH=htpasswd`): the settings stay.
        (Some(Value::Mapping(section)), Value::String(driver)) => {
            section.entry(Value::String(driver)).or_insert_with(|| Value::Mapping(Mapping::new()));
        }
        (_, parsed) => {
            map.insert(leaf, parsed);
        }
    }
    Ok(())
}

/// registry:2's driver sections (`auth`, `storage`) may be named by a bare string.
fn driver_section(driver: String) -> Value {
    let mut section = Mapping::new();
    section.insert(Value::String(driver), Value::Mapping(Mapping::new()));
    Value::Mapping(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Loads `yaml` from a file, as `berth serve FILE` does, with `vars` over it.
    fn load_file(yaml: &str, vars: &[(&str, &str)]) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yml");
        std::fs::write(&file, yaml).unwrap();
        Config::load(Some(&file), env(vars)).unwrap()
    }

    #[test]
    fn registry2_file_and_env() {
        let c = load_file(
            "version: 0.1\nlog:\n  fields:\n    service: registry\nstorage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n  headers:\n    X-Content-Type-Options: [nosniff]\nhealth:\n  storagedriver:\n    enabled: true\n    interval: 10s\n    threshold: 3\n",
            &[
                ("REGISTRY_HTTP_ADDR", "127.0.0.1:5999"),
                ("REGISTRY_STORAGE_DELETE_ENABLED", "true"),
                ("REGISTRY_LOG_LEVEL", "debug"),
                ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "2h"),
                ("PATH", "/bin"),
            ],
        );
        assert_eq!(c.addr().unwrap(), "127.0.0.1:5999".parse().unwrap());
        assert!(c.storage.delete.enabled);
        assert_eq!(c.root(), PathBuf::from("/var/lib/registry"));
        assert_eq!(c.log_level().unwrap(), "debug");
        assert_eq!(c.storage.maintenance.uploadpurging.age, Duration::from_secs(7200));
        assert_eq!(c.http.headers["X-Content-Type-Options"], vec!["nosniff".to_string()]);
    }

    /// `berth.gc` from a file, its scalars overridden by the environment.
    #[test]
    fn garbage_collection_settings() {
        let c = load_file(
            "berth:\n  gc:\n    grace: 2h\n    untagged:\n      - namespace: ci\n        grace: 72h\n      - namespace: '*'\n        grace: 30d\n",
            &[("REGISTRY_BERTH_GC_INTERVAL", "5m"), ("REGISTRY_BERTH_GC_ENABLED", "false")],
        );
        let gc = &c.berth.gc;
        assert_eq!((gc.enabled, gc.interval, gc.grace), (false, Duration::from_secs(300), Duration::from_secs(7200)));
        assert_eq!((gc.holdlease, gc.storagescan), (Duration::from_secs(3600), Duration::from_secs(86400)));
        let untagged: Vec<(&str, Duration)> = gc.untagged.iter().map(|p| (p.namespace.as_str(), p.grace)).collect();
        assert_eq!(untagged, vec![("ci", Duration::from_secs(72 * 3600)), ("*", Duration::from_secs(30 * 86400))]);
    }

    /// registry:2's Swift settings, the password from the environment (digits stay a
    /// password), the keys Berth ignores accepted.
    #[test]
    fn swift_as_registry2_configures_it() {
        let c = load_file(
            "version: 0.1\nstorage:\n  swift:\n    authurl: https://keystone.example/v3\n    username: reg\n    container: images\n    tenant: team\n    domain: corp\n    region: fr\n    chunksize: 5242880\n    prefix: /registry\n    insecureskipverify: false\n    tempurlmethods: [GET]\n",
            &[("REGISTRY_STORAGE_SWIFT_PASSWORD", "0123"), ("REGISTRY_STORAGE_SWIFT_AUTHVERSION", "3")],
        );
        let swift = c.storage.swift.expect("storage.swift");
        assert_eq!(swift.password, Secret("0123".into()));
        assert_eq!((swift.authversion, swift.chunksize), (3, 5 << 20));
        assert_eq!(swift.prefix.as_deref(), Some("/registry"));
        assert_eq!((swift.tenant.as_deref(), swift.domain.as_deref()), (Some("team"), Some("corp")));
        let defaults = Config::load(
            None,
            env(&[
                ("REGISTRY_STORAGE", "swift"),
                ("REGISTRY_STORAGE_SWIFT_AUTHURL", "http://swift/auth/v1.0"),
                ("REGISTRY_STORAGE_SWIFT_USERNAME", "a:b"),
                ("REGISTRY_STORAGE_SWIFT_PASSWORD", "k"),
                ("REGISTRY_STORAGE_SWIFT_CONTAINER", "c"),
            ]),
        )
        .unwrap();
        let swift = defaults.storage.swift.expect("REGISTRY_STORAGE=swift");
        assert_eq!((swift.authversion, swift.chunksize, swift.secretkey), (0, 20 << 20, None));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::load(None, env(&[("REGISTRY_STORAGE_FILESYSTEM_ROOTDIR", "/x")])).unwrap_err();
        assert!(err.to_string().contains("storage.filesystem"), "{err}");
        assert!(err.to_string().contains("rootdir"), "{err}");
        let err = Config::load(None, env(&[("REGISTRY_STORAGE_DELETE_ENABLED", "maybe")])).unwrap_err();
        assert!(err.to_string().contains("storage.delete.enabled"), "{err}");
        let c = Config::load(None, env(&[("REGISTRY_LOG_LEVEL", "loud")])).unwrap();
        assert!(c.log_level().unwrap_err().to_string().contains("log.level"));
    }

    #[test]
    fn auth_driver_named_by_its_variable_in_either_order() {
        let vars = [
            ("REGISTRY_AUTH", "htpasswd"),
            ("REGISTRY_AUTH_HTPASSWD_REALM", "Registry Realm"),
            ("REGISTRY_AUTH_HTPASSWD_PATH", "/auth/htpasswd"),
        ];
        for order in [vars.to_vec(), vars.iter().rev().copied().collect()] {
            let c = Config::load(None, env(&order)).unwrap();
            let h = c.auth.htpasswd.expect("htpasswd configured");
            assert_eq!(h.path, PathBuf::from("/auth/htpasswd"));
            assert_eq!(h.realm.as_deref(), Some("Registry Realm"));
        }
        let c = Config::load(
            None,
            env(&[("REGISTRY_HTTP_TLS_CERTIFICATE", "/c.pem"), ("REGISTRY_HTTP_TLS_KEY", "/k.pem")]),
        )
        .unwrap();
        assert_eq!(c.http.tls.unwrap().key, PathBuf::from("/k.pem"));
    }

    #[test]
    fn oidc_from_the_file_with_its_secret_from_the_environment() {
        let c = load_file(
            "berth:\n  auth:\n    oidc:\n      issuer: https://sso.example.com\n      clientid: berth\n",
            &[("REGISTRY_BERTH_AUTH_OIDC_CLIENTSECRET", "s3cret")],
        );
        let oidc = c.berth.auth.oidc.expect("oidc configured");
        assert_eq!((oidc.issuer.as_str(), oidc.clientid.as_str()), ("https://sso.example.com", "berth"));
        assert_eq!(oidc.clientsecret, Some(Secret("s3cret".into())));
        assert_eq!(oidc.scopes, ["openid", "profile", "email"]);
        assert_eq!((oidc.usernameclaim.as_str(), oidc.groupsclaim.as_str()), ("preferred_username", "groups"));
        assert_eq!(oidc.cliclientid, None);
        assert!(!format!("{oidc:?}").contains("s3cret"), "the secret is redacted in Debug");
    }

    #[test]
    fn ldap_from_the_file_and_from_the_environment() {
        let c = load_file(
            "berth:\n  auth:\n    ldap:\n      url: ldaps://dc.example.org\n      cafile: /etc/berth/ad-ca.pem\n      binddn: CN=berth,OU=Service,DC=example,DC=org\n      bindpassword: reader-secret\n      basedn: DC=example,DC=org\n      userfilter: (sAMAccountName={username})\n      groupbasedn: OU=Groups,DC=example,DC=org\n      timeout: 2s\n",
            &[],
        );
        let ldap = c.berth.auth.ldap.expect("ldap configured");
        assert_eq!(ldap.url, "ldaps://dc.example.org");
        assert_eq!(ldap.cafile, Some(PathBuf::from("/etc/berth/ad-ca.pem")));
        assert_eq!(ldap.binddn.as_deref(), Some("CN=berth,OU=Service,DC=example,DC=org"));
        assert_eq!(ldap.bindpassword, Some(Secret("reader-secret".into())));
        assert_eq!(ldap.basedn, "DC=example,DC=org");
        assert_eq!(ldap.userfilter, "(sAMAccountName={username})");
        assert_eq!(ldap.groupbasedn.as_deref(), Some("OU=Groups,DC=example,DC=org"));
        assert_eq!(ldap.timeout, Duration::from_secs(2));
        // Unset keys take their defaults.
        assert!(!ldap.starttls);
        assert_eq!(ldap.userdn, None);
        assert_eq!((ldap.groupfilter.as_str(), ldap.groupattribute.as_str()), ("(member={dn})", "cn"));
        let debug = format!("{ldap:?}");
        assert!(!debug.contains("reader-secret") && debug.contains("<redacted>"), "{debug}");

        let c = Config::load(
            None,
            env(&[
                ("REGISTRY_BERTH_AUTH_LDAP_URL", "ldap://127.0.0.1:389"),
                ("REGISTRY_BERTH_AUTH_LDAP_STARTTLS", "true"),
                ("REGISTRY_BERTH_AUTH_LDAP_USERDN", "uid={username},ou=people,dc=example,dc=org"),
                ("REGISTRY_BERTH_AUTH_LDAP_GROUPBASEDN", "ou=groups,dc=example,dc=org"),
                ("REGISTRY_BERTH_AUTH_LDAP_GROUPFILTER", "(memberUid={username})"),
                ("REGISTRY_BERTH_AUTH_LDAP_GROUPATTRIBUTE", "description"),
                ("REGISTRY_BERTH_AUTH_LDAP_TIMEOUT", "750ms"),
            ]),
        )
        .unwrap();
        let ldap = c.berth.auth.ldap.expect("ldap configured");
        assert_eq!(ldap.url, "ldap://127.0.0.1:389");
        assert!(ldap.starttls);
        assert_eq!(ldap.userdn.as_deref(), Some("uid={username},ou=people,dc=example,dc=org"));
        assert_eq!(ldap.groupfilter, "(memberUid={username})");
        assert_eq!(ldap.groupattribute, "description");
        assert_eq!(ldap.timeout, Duration::from_millis(750));
        assert_eq!((ldap.binddn, ldap.userfilter), (None, "(uid={username})".to_owned()));

        let err = Config::load(None, env(&[("REGISTRY_BERTH_AUTH_LDAP_STARTTLS", "true")])).unwrap_err();
        assert!(err.to_string().contains("berth.auth.ldap") && err.to_string().contains("url"), "{err}");
        let err = Config::load(None, env(&[("REGISTRY_BERTH_AUTH_LDAP_USERFILTR", "(uid={username})")])).unwrap_err();
        assert!(err.to_string().contains("userfiltr"), "{err}");
    }

    #[test]
    fn defaults() {
        let c = Config::load(None, Vec::new()).unwrap();
        assert_eq!(c.addr().unwrap(), DEFAULT_ADDR.parse().unwrap());
        assert!(!c.storage.delete.enabled);
        assert_eq!(c.database_url(), "sqlite://data/berth/metadata.db");
        let all = Config::load(None, env(&[("REGISTRY_HTTP_ADDR", ":5000")])).unwrap();
        assert!(all.addr().unwrap().ip().is_unspecified());
    }

    #[test]
    fn a_password_of_digits_is_a_password() {
        let c = Config::load(
            None,
            env(&[("REGISTRY_BERTH_AUTH_ADMIN_USERNAME", "root"), ("REGISTRY_BERTH_AUTH_ADMIN_PASSWORD", "12345678")]),
        )
        .unwrap();
        let admin = c.berth.auth.admin.unwrap();
        assert_eq!(admin.password, Secret("12345678".into()));
        assert_eq!(format!("{admin:?}").matches("12345678").count(), 0, "the password is not shown");
    }

    #[test]
    fn database_passwords_are_not_shown() {
        let url = "postgres://berth:s3cr:et@db.example.org:5432/registry";
        let c = Config::load(None, env(&[("REGISTRY_BERTH_DATABASE_URL", url)])).unwrap();
        assert_eq!(c.database_url_redacted(), "postgres://berth:<redacted>@db.example.org:5432/registry");
        assert_eq!(redact_password("postgres://db/registry"), "postgres://db/registry");
        assert_eq!(redact_password("sqlite://data/a@b/metadata.db"), "sqlite://data/a@b/metadata.db");
    }
}
