//! Assembly of a Berth server from its configuration: stores, registry service, HTTP
//! edge, background tasks, and the process lifecycle.

use anyhow::{bail, Context};
use axum::http::{HeaderName, HeaderValue};
use berth_auth::{
    Actions, AuthSettings, Authenticator, ExternalTokenSettings, FederationRule, FederationSettings, LdapSettings,
    OidcSettings, TokenSettings,
};
pub use berth_config as config;
pub mod admin;
pub mod login;
use berth_http::{EdgeOptions, ServerLimits};
use berth_metadata::{Immutability, ImmutabilityRule, MetadataStore, Role};
use berth_registry::{GcOptions, Reconciled, Registry, Settings};
use berth_storage::{
    AzureSettings, BlobStore, FsBlobStore, GcsSettings, Name, ObjectBlobStore, S3Settings, SwiftLogin, SwiftSettings,
};
use config::{Config, UploadPurging};
use std::sync::Arc;
use std::time::Duration;

/// The registry service and its HTTP router, built from a configuration.
pub struct App {
    pub registry: Arc<Registry>,
    pub router: axum::Router,
}

pub async fn build(config: &Config) -> anyhow::Result<App> {
    let blobs = blob_store(config).await?;
    let meta = MetadataStore::open(&config.database_url())
        .await
        .with_context(|| format!("opening metadata database {}", config.database_url_redacted()))?;
    meta.declare_immutability_rules(&declared_rules(config)?).await.context("storing `berth.immutability`")?;
    let uploads = &config.berth.uploads;
    let settings = Settings {
        delete_enabled: config.storage.delete.enabled,
        max_manifest_size: config.berth.manifests.maxsize.unwrap_or(Settings::default().max_manifest_size),
        upload_idle_timeout: config.storage.maintenance.uploadpurging.age,
        read_only: config.storage.maintenance.readonly.enabled,
        max_blob_size: config.berth.blobs.maxsize,
        max_sessions_per_repository: uploads.maxsessionsperrepository,
        max_sessions: uploads.maxsessions,
        orphan_grace: uploads.orphangrace,
        gc_grace: config.berth.gc.grace,
        gc_hold_lease: config.berth.gc.holdlease,
        gc_untagged: untagged_policies(config)?,
    };
    let auth = match auth_settings(config)? {
        Some(settings) => Some(Arc::new(Authenticator::new(settings, meta.clone()).await?)),
        None => None,
    };
    let registry = Arc::new(Registry::new(blobs, meta, settings));
    let router = berth_http::router(registry.clone(), edge_options(config)?, auth);
    Ok(App { registry, router })
}

/// `storage.<driver>.chunksize`, checked: parts are at least 5 MiB (S3's smallest).
fn part_size(driver: &str, chunksize: u64) -> anyhow::Result<usize> {
    let size = usize::try_from(chunksize).unwrap_or(usize::MAX);
    if size < berth_storage::MIN_PART_SIZE {
        bail!("`storage.{driver}.chunksize` must be at least 5 MiB (5242880)");
    }
    Ok(size)
}

/// The blocks a blob is written to Azure in (registry:2 has no setting for it).
const AZURE_BLOCK_SIZE: usize = 10 << 20;

/// Where blobs live: an S3 bucket with `storage.s3`, an Azure container with
/// `storage.azure`, a GCS bucket with `storage.gcs`, else the filesystem root (which
/// holds the SQLite database in every case).
async fn blob_store(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let s = &config.storage;
    if [s.s3.is_some(), s.azure.is_some(), s.gcs.is_some(), s.swift.is_some()].into_iter().filter(|&b| b).count() > 1 {
        bail!("`storage.s3`, `storage.azure`, `storage.gcs` and `storage.swift` exclude each other: blobs live in one store");
    }
    if let Some(swift) = &s.swift {
        let store = ObjectBlobStore::swift(&swift_settings(swift, !s.redirect.disable))
            .await
            .with_context(|| format!("`storage.swift` container {:?} at {}", swift.container, swift.authurl))?;
        return Ok(Arc::new(store));
    }
    if let Some(gcs) = &s.gcs {
        let settings = GcsSettings {
            bucket: gcs.bucket.clone(),
            key_file: gcs.keyfile.clone(),
            root: gcs.rootdirectory.clone().unwrap_or_else(|| "/".into()),
            endpoint: gcs.endpoint.clone(),
            part_size: part_size("gcs", gcs.chunksize)?,
            redirect: !s.redirect.disable,
        };
        let store =
            ObjectBlobStore::gcs(&settings).with_context(|| format!("`storage.gcs` bucket {:?}", gcs.bucket))?;
        return Ok(Arc::new(store));
    }
    if let Some(azure) = &config.storage.azure {
        let endpoint =
            azure.serviceurl.clone().unwrap_or_else(|| format!("https://{}.blob.{}", azure.accountname, azure.realm));
        let settings = AzureSettings {
            account_name: azure.accountname.clone(),
            account_key: azure.accountkey.0.clone(),
            container: azure.container.clone(),
            endpoint,
            root: azure.rootdirectory.clone().unwrap_or_else(|| "/".into()),
            part_size: AZURE_BLOCK_SIZE,
        };
        let store = ObjectBlobStore::azure(&settings)
            .with_context(|| format!("`storage.azure` container {:?}", azure.container))?;
        return Ok(Arc::new(store));
    }
    let Some(s3) = &config.storage.s3 else {
        let root = config.root();
        let store = FsBlobStore::open(&root).with_context(|| format!("opening storage at {}", root.display()))?;
        return Ok(Arc::new(store));
    };
    let settings = S3Settings {
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        endpoint: s3.regionendpoint.clone().filter(|e| !e.is_empty()),
        access_key: s3.accesskey.clone().filter(|k| !k.is_empty()),
        secret_key: s3.secretkey.as_ref().map(|k| k.0.clone()).filter(|k| !k.is_empty()),
        session_token: s3.sessiontoken.as_ref().map(|t| t.0.clone()),
        root: s3.rootdirectory.clone().unwrap_or_else(|| "/".into()),
        encrypt: s3.encrypt,
        key_id: s3.keyid.clone(),
        secure: s3.secure,
        virtual_host_style: !s3.forcepathstyle,
        part_size: part_size("s3", s3.chunksize)?,
        storage_class: s3.storageclass.clone(),
        redirect: !config.storage.redirect.disable,
    };
    let store = ObjectBlobStore::s3(&settings).with_context(|| format!("`storage.s3` bucket {:?}", s3.bucket))?;
    Ok(Arc::new(store))
}

/// `berth.gc.untagged`, checked: `*` stands for every repository.
fn untagged_policies(config: &Config) -> anyhow::Result<Vec<(String, std::time::Duration)>> {
    config
        .berth
        .gc
        .untagged
        .iter()
        .map(|p| match p.namespace.as_str() {
            "*" => Ok((String::new(), p.grace)),
            "" => bail!("`berth.gc.untagged`: `namespace` must not be empty (`*` for every repository)"),
            ns => Ok((ns.trim_end_matches('/').to_owned(), p.grace)),
        })
        .collect()
}

/// `berth.immutability`, checked.
fn declared_rules(config: &Config) -> anyhow::Result<Vec<ImmutabilityRule>> {
    let rule = |r: &config::ImmutabilityRule| {
        let level = Immutability::parse(&r.level)
            .with_context(|| format!("`berth.immutability` level {:?}: `move` or `delete`", r.level))?;
        if r.namespace.is_empty() || r.repositories.is_empty() || r.tags.is_empty() {
            bail!("`berth.immutability`: `namespace`, `repositories` and `tags` must not be empty");
        }
        Ok(ImmutabilityRule {
            id: None,
            namespace: r.namespace.trim_matches('/').to_owned(),
            repositories: r.repositories.clone(),
            tags: r.tags.clone(),
            except: r.except.clone(),
            level,
            signatures: r.signatures,
            declared: true,
        })
    };
    config.berth.immutability.iter().map(rule).collect()
}

/// `storage.swift` as the store's settings. Keys live under `<prefix>/files/`, where
/// registry:2's Swift driver keeps them.
fn swift_settings(swift: &berth_config::Swift, redirect: bool) -> SwiftSettings {
    let name = |name: &Option<String>, id: &Option<String>| match (id, name) {
        (Some(id), _) => Some(Name::Id(id.clone())),
        (None, Some(name)) => Some(Name::Name(name.clone())),
        (None, None) => None,
    };
    let login = SwiftLogin {
        auth_url: swift.authurl.clone(),
        auth_version: swift.authversion,
        username: swift.username.clone(),
        password: swift.password.0.clone(),
        project: swift.tenant.clone(),
        project_id: swift.tenantid.clone(),
        project_domain: name(&swift.tenantdomain, &swift.tenantdomainid),
        domain: name(&swift.domain, &swift.domainid),
        trust_id: swift.trustid.clone(),
        region: swift.region.clone(),
        interface: swift.endpointtype.clone().unwrap_or_else(|| "public".into()),
    };
    let prefix = swift.prefix.as_deref().unwrap_or("").trim_matches('/');
    SwiftSettings {
        login,
        container: swift.container.clone(),
        root: if prefix.is_empty() { "/files/".into() } else { format!("/{prefix}/files/") },
        part_size: usize::try_from(swift.chunksize).unwrap_or(usize::MAX),
        temp_url_key: swift.secretkey.as_ref().map(|k| k.0.clone()),
        container_key: swift.tempurlcontainerkey,
        redirect,
    }
}

/// Authentication from `auth` and `berth.auth`; `None` when it is off (every request
/// is admitted, which `serve` allows only on loopback unless told otherwise).
pub fn auth_settings(config: &Config) -> anyhow::Result<Option<AuthSettings>> {
    let auth = &config.auth;
    let ours = &config.berth.auth;
    if auth.silly.is_some() {
        bail!("`auth.silly` is registry:2's test-only driver and is not supported: use `auth.htpasswd` or `berth.auth.token`");
    }
    let external = match &auth.token {
        Some(_) if ours.token.enabled => {
            bail!("`auth.token` (an external token server) and `berth.auth.token` (Berth's own) exclude each other")
        }
        Some(t) => {
            if t.jwks.is_none() && t.rootcertbundle.is_none() {
                bail!("`auth.token` needs `rootcertbundle` and/or `jwks`: the token server's certificates or keys")
            }
            Some(ExternalTokenSettings {
                realm: t.realm.clone(),
                service: t.service.clone(),
                issuer: t.issuer.clone(),
                jwks: t.jwks.clone(),
                root_certificates: t.rootcertbundle.clone(),
            })
        }
        None => None,
    };
    if auth.htpasswd.is_none()
        && !ours.token.enabled
        && external.is_none()
        && ours.ldap.is_none()
        && ours.federation.is_empty()
        && ours.oidc.is_none()
        && config.http.tls.as_ref().is_none_or(|t| t.clientcas.is_empty())
    {
        return Ok(None);
    }
    let level = |key: &str, value: &str| {
        Actions::from_level(value).with_context(|| {
            format!("invalid `berth.auth.defaultaccess.{key}` {value:?}: expected none, pull, push or delete")
        })
    };
    let anonymous = level("anonymous", &ours.defaultaccess.anonymous)?;
    if anonymous.contains(Actions::PUSH) {
        bail!("`berth.auth.defaultaccess.anonymous` may be none or pull: anonymous pushes are not allowed");
    }
    Ok(Some(AuthSettings {
        htpasswd: auth.htpasswd.as_ref().map(|h| (h.path.clone(), h.realm.clone().unwrap_or_else(|| "berth".into()))),
        token: ours.token.enabled.then(|| TokenSettings {
            service: ours.token.service.clone(),
            issuer: ours.token.issuer.clone(),
            expiration: ours.token.expiration,
            refresh_expiration: ours.token.refreshexpiration,
            realm: ours.token.realm.clone(),
        }),
        external,
        anonymous,
        authenticated: level("authenticated", &ours.defaultaccess.authenticated)?,
        bootstrap_admin: ours.admin.as_ref().map(|a| (a.username.clone(), a.password.0.clone())),
        login_failures: ours.loginlimit.failures,
        login_window: ours.loginlimit.window,
        credential_cache: ours.credentialcache,
        ldap: ours.ldap.as_ref().map(|l| LdapSettings {
            url: l.url.clone(),
            starttls: l.starttls,
            ca_file: l.cafile.clone(),
            bind_dn: l.binddn.clone(),
            bind_password: l.bindpassword.as_ref().map(|p| p.0.clone()),
            user_dn: l.userdn.clone(),
            base_dn: l.basedn.clone(),
            user_filter: l.userfilter.clone(),
            group_base_dn: l.groupbasedn.clone(),
            group_filter: l.groupfilter.clone(),
            group_name_attribute: l.groupattribute.clone(),
            timeout: l.timeout,
        }),
        federation: ours.federation.iter().map(federation_settings).collect::<anyhow::Result<_>>()?,
        oidc: ours.oidc.as_ref().map(|o| OidcSettings {
            issuer: o.issuer.clone(),
            client_id: o.clientid.clone(),
            client_secret: o.clientsecret.as_ref().map(|s| s.0.clone()),
            redirect_url: o.redirecturl.clone(),
            cli_client_id: o.cliclientid.clone(),
            scopes: o.scopes.clone(),
            username_claim: o.usernameclaim.clone(),
            groups_claim: o.groupsclaim.clone(),
            timeout: o.timeout,
        }),
        namespace_depth: match ours.namespacedepth {
            d @ 1..=4 => d,
            d => bail!("`berth.auth.namespacedepth` must be 1 to 4, not {d}"),
        },
    }))
}

/// One `berth.auth.federation` entry, its roles parsed and its name checked.
fn federation_settings(f: &berth_config::Federation) -> anyhow::Result<FederationSettings> {
    let key = format!("`berth.auth.federation` {:?}", f.name);
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if f.name.is_empty() || !f.name.chars().all(plain) {
        bail!("{key}: a provider's name is letters, digits and . _ -");
    }
    if f.rules.is_empty() {
        bail!("{key}: no rules, so no token would be admitted");
    }
    let rules = f
        .rules
        .iter()
        .map(|r| {
            let grants = r
                .grants
                .iter()
                .map(|g| {
                    let role = Role::parse(&g.role).with_context(|| {
                        format!("{key}: invalid role {:?}: expected reader, developer, maintainer or admin", g.role)
                    })?;
                    Ok((g.namespace.trim_end_matches('/').to_owned(), role))
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(FederationRule { claims: r.claims.clone().into_iter().collect(), grants })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(FederationSettings {
        name: f.name.clone(),
        issuer: f.issuer.clone(),
        audience: f.audience.clone(),
        jwks_uri: f.jwksuri.clone(),
        rules,
        timeout: f.timeout,
    })
}

fn edge_options(config: &Config) -> anyhow::Result<EdgeOptions> {
    let mut headers = Vec::new();
    for (name, values) in &config.http.headers {
        let header = HeaderName::try_from(name.as_str())
            .with_context(|| format!("invalid header name in `http.headers`: {name:?}"))?;
        for v in values {
            let value = HeaderValue::try_from(v.as_str())
                .with_context(|| format!("invalid value for `http.headers.{name}`"))?;
            headers.push((header.clone(), value));
        }
    }
    let trusted_proxies = config
        .berth
        .http
        .trustedproxies
        .iter()
        .map(|p| {
            p.parse::<ipnet::IpNet>().or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).with_context(
                || format!("invalid `berth.http.trustedproxies` entry {p:?}: expected an address or CIDR"),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(EdgeOptions {
        relative_urls: config.http.relativeurls,
        headers,
        body_timeout: config.berth.http.bodytimeout,
        trusted_proxies,
    })
}

/// `berth.http.clientcertificates`: whether a client CA still lets clients without a
/// certificate connect.
fn client_certificate_optional(config: &Config) -> anyhow::Result<bool> {
    match config.berth.http.clientcertificates.as_str() {
        "required" => Ok(false),
        "optional" => Ok(true),
        other => bail!("invalid `berth.http.clientcertificates` {other:?}: expected required or optional"),
    }
}

/// TLS from `http.tls`, if configured.
fn tls(config: &Config) -> anyhow::Result<Option<berth_http::Tls>> {
    let Some(tls) = &config.http.tls else { return Ok(None) };
    if tls.letsencrypt.is_some() {
        bail!("`http.tls.letsencrypt` is not supported: give `http.tls.certificate` and `http.tls.key`");
    }
    let tls13_only = match tls.minimumtls.as_deref().unwrap_or("tls1.2") {
        "tls1.2" => false,
        "tls1.3" => true,
        other => bail!(
            "invalid `http.tls.minimumtls` {other:?}: expected tls1.2 or tls1.3 (older versions are never offered)"
        ),
    };
    let settings = berth_http::TlsSettings {
        certificate: tls.certificate.clone(),
        key: tls.key.clone(),
        tls13_only,
        reload_every: config.berth.http.tlsreload,
        client_cas: tls.clientcas.clone(),
        client_certificate_optional: client_certificate_optional(config)?,
    };
    Ok(Some(berth_http::Tls::load(settings)?))
}

/// The listener's limits from `berth.http`.
pub fn server_limits(config: &Config) -> ServerLimits {
    let h = &config.berth.http;
    ServerLimits {
        max_connections: h.maxconnections.max(1),
        header_timeout: h.headertimeout,
        idle_timeout: h.idletimeout,
        send_timeout: h.sendtimeout,
        max_header_bytes: h.maxheaderbytes,
    }
}

/// Runs the server until SIGTERM or Ctrl-C, then lets in-flight requests finish.
pub async fn serve(config: Config, allow_unauthenticated: bool) -> anyhow::Result<()> {
    let addr = config.addr()?;
    let allowed = allow_unauthenticated || config.berth.allowunauthenticated;
    let authenticated = auth_settings(&config)?.is_some();
    if !addr.ip().is_loopback() && !authenticated && allowed {
        tracing::warn!(%addr, "listening beyond loopback WITHOUT authentication: anyone who reaches it can push and delete");
    }
    if !(addr.ip().is_loopback() || authenticated || allowed) {
        bail!(
            "refusing to listen on {addr} without authentication: anyone who reaches it could push and delete. \
             Configure authentication (auth.htpasswd, berth.auth.token, berth.auth.ldap or http.tls.clientcas), listen on loopback, or pass \
             --allow-unauthenticated (berth.allowunauthenticated: true) to accept that"
        );
    }
    let app = build(&config).await?;
    if config.storage.maintenance.readonly.enabled {
        tracing::warn!("read-only mode (storage.maintenance.readonly): every write is refused");
    }
    tokio::spawn(maintain_uploads(app.registry.clone(), config.storage.maintenance.uploadpurging.clone()));
    if config.berth.gc.enabled && !config.storage.maintenance.readonly.enabled {
        tokio::spawn(collect_garbage(app.registry.clone(), config.berth.gc.interval, config.berth.gc.storagescan));
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
    tracing::info!(%addr, root = %config.root().display(), "berth is ready");
    let tls = tls(&config)?;
    berth_http::serve(listener, app.router, server_limits(&config), tls, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Reconciles crash leftovers at start-up and then every purge interval, and purges
/// idle upload sessions when purging is enabled.
async fn maintain_uploads(registry: Arc<Registry>, purging: UploadPurging) {
    let mut ticks = tokio::time::interval(purging.interval);
    loop {
        ticks.tick().await;
        match registry.reconcile_uploads().await {
            Ok(r) if r == Reconciled::default() => {}
            Ok(r) => tracing::info!(spools = r.spools, sessions = r.sessions, "removed upload leftovers of a crash"),
            Err(e) => tracing::warn!(error = %e.message, "reconciling upload sessions failed"),
        }
        if !purging.enabled || purging.dryrun {
            continue;
        }
        match registry.purge_idle_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "purged idle upload sessions"),
            Err(e) => tracing::warn!(error = %e.message, "purging idle upload sessions failed"),
        }
    }
}

/// Online garbage collection: a pass every `interval`, listing the store for unrecorded
/// objects every `storagescan`.
async fn collect_garbage(registry: Arc<Registry>, interval: Duration, storagescan: Duration) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_scan: Option<tokio::time::Instant> = None;
    loop {
        ticks.tick().await;
        let scan = last_scan.is_none_or(|at| at.elapsed() >= storagescan);
        let opts = GcOptions { scan_storage: scan, ..GcOptions::configured(registry.settings()) };
        match registry.collect_garbage(&opts).await {
            Ok(r) => {
                if scan {
                    last_scan = Some(tokio::time::Instant::now());
                }
                if r.links + r.blob_count + r.orphans_seen + r.failed > 0 {
                    tracing::info!(
                        links = r.links,
                        blobs = r.blob_count,
                        bytes = r.bytes,
                        orphans_seen = r.orphans_seen,
                        failed = r.failed,
                        "garbage collection pass"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e.message, "garbage collection pass failed; the next one retries"),
        }
    }
}

/// `berth gc` and `berth garbage-collect`: one pass on the configured stores, from this
/// process. On SQLite the server must be stopped (one process owns the database; `berth
/// admin gc` asks a running server); on PostgreSQL it runs beside the instances.
/// `delete_untagged` (registry:2's `--delete-untagged`) collects every untagged manifest
/// that nothing keeps, now, whatever `berth.gc.untagged` says.
pub async fn gc_once(
    config: &Config,
    dry_run: bool,
    scan_storage: bool,
    delete_untagged: bool,
) -> anyhow::Result<berth_registry::GcReport> {
    let app = build(config).await?;
    let mut opts = GcOptions { scan_storage, dry_run, ..GcOptions::configured(app.registry.settings()) };
    if delete_untagged {
        opts.untagged = vec![(String::new(), Duration::ZERO)];
    }
    app.registry.collect_garbage(&opts).await.map_err(|e| anyhow::anyhow!("garbage collection: {}", e.message))
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
}
