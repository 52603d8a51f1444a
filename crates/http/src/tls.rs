//! HTTPS with rustls: TLS 1.2 and 1.3 only, HTTP/2 offered through ALPN, and the
//! certificate reloaded when its files change, without a restart and without touching
//! the connections already open (each keeps the certificate it was handshaken with).

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where the certificate comes from and how it is offered.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// Offer TLS 1.3 only (`http.tls.minimumtls: tls1.3`).
    pub tls13_only: bool,
    /// How often the files are checked for changes.
    pub reload_every: Duration,
    /// PEM bundles of the CAs whose client certificates are accepted (mTLS); none: no
    /// client certificates asked for.
    pub client_cas: Vec<PathBuf>,
    /// Whether a client may connect without a certificate when `client_cas` are given.
    pub client_certificate_optional: bool,
}

/// The TLS side of the listener: a rustls configuration whose certificate follows the
/// files.
#[derive(Clone)]
pub struct Tls {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
}

impl Tls {
    /// Loads the certificate and key (failing now if they are unusable) and starts a task
    /// that reloads them when they change. Must be called inside a Tokio runtime.
    pub fn load(settings: TlsSettings) -> anyhow::Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = CertFiles { certificate: settings.certificate.clone(), key: settings.key.clone() };
        let key = files.load(&provider)?;
        let resolver = Arc::new(Reloading { current: ArcSwap::from_pointee(key) });
        let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
        let builder = match client_verifier(&settings, &provider)? {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(watch(files, provider, resolver, settings.reload_every));
        Ok(Tls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }
}

/// Verifies client certificates against `client_cas`, if any are configured.
fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>> {
    use anyhow::Context;
    if settings.client_cas.is_empty() {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    for path in &settings.client_cas {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading client CAs from {}", path.display()))?;
        anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
        for cert in certs {
            roots.add(cert).with_context(|| format!("unusable CA certificate in {}", path.display()))?;
        }
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if settings.client_certificate_optional { builder.allow_unauthenticated() } else { builder };
    Ok(Some(builder.build().context("setting up client certificate verification")?))
}

/// The common name of the subject of a verified client certificate: the caller's name.
pub(crate) fn client_subject(connection: &rustls::ServerConnection) -> Option<Arc<str>> {
    let cert = connection.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    (!name.is_empty()).then(|| Arc::from(name))
}

struct CertFiles {
    certificate: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn load(&self, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
        use anyhow::Context;
        let chain = CertificateDer::pem_file_iter(&self.certificate)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading certificates from {}", self.certificate.display()))?;
        anyhow::ensure!(!chain.is_empty(), "no certificate in {}", self.certificate.display());
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("reading the private key from {}", self.key.display()))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .with_context(|| format!("unusable private key in {}", self.key.display()))?;
        let certified = CertifiedKey::new(chain, signing);
        // A certificate replaced before its key (or the other way round) must not be
        // served with the wrong key: keep the old pair until both files agree.
        certified.keys_match().with_context(|| {
            format!(
                "the key in {} does not match the certificate in {}",
                self.key.display(),
                self.certificate.display()
            )
        })?;
        Ok(certified)
    }

    /// What identifies the files' current contents without reading them.
    fn stamp(&self) -> Option<[(SystemTime, u64); 2]> {
        let stamp = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        Some([stamp(&self.certificate)?, stamp(&self.key)?])
    }
}

#[derive(Debug)]
struct Reloading {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

async fn watch(files: CertFiles, provider: Arc<CryptoProvider>, resolver: Arc<Reloading>, every: Duration) {
    let mut seen = files.stamp();
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        ticks.tick().await;
        let now = files.stamp();
        if now.is_none() || now == seen {
            continue;
        }
        match files.load(&provider) {
            Ok(key) => {
                resolver.current.store(Arc::new(key));
                seen = now;
                tracing::info!(certificate = %files.certificate.display(), "reloaded the TLS certificate");
            }
            // Half-written files: try again at the next tick, keep serving the old pair.
            Err(e) => tracing::warn!(error = format!("{e:#}"), "not reloading the TLS certificate yet"),
        }
    }
}
