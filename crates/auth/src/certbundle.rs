//! registry:2's `auth.token.rootcertbundle`: the certificates of an external token
//! server (docker_auth, Harbor's core, GitLab). As Distribution does, a token is
//! verified with
//! - the leaf of the chain in its `x5c` header, if that chain leads to one of the
//!   bundle's certificates (checked by webpki, as TLS chains are: validity times,
//!   signatures, CA constraints, and the server-auth usage when the leaf names usages);
//! - otherwise the bundle certificate whose libtrust key id is the token's `kid`, the
//!   key id docker_auth and Distribution's own tooling put there.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The bundle's certificates, as roots of `x5c` chains.
pub struct RootBundle {
    anchors: Vec<TrustAnchor<'static>>,
}

/// A bundle certificate's key: its libtrust key id, the key, and its algorithm.
pub type BundleKey = (String, DecodingKey, Algorithm);

/// The server-auth extended key usage, which Go's `x509.Verify` requires by default
/// (and so Distribution) of a leaf that lists usages at all.
const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

/// Reads a PEM bundle: the roots, and each certificate's key by libtrust key id.
pub fn load(path: &std::path::Path) -> Result<(RootBundle, Vec<BundleKey>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificates", path.display()));
    }
    let mut anchors = Vec::new();
    let mut keys = Vec::new();
    for cert in &certs {
        let anchor = webpki::anchor_from_trusted_cert(cert).map_err(|e| format!("{}: {e:?}", path.display()))?;
        anchors.push(anchor.to_owned());
        let (key, algorithm, spki) = certificate_key(cert)?;
        keys.push((libtrust_key_id(&spki), key, algorithm));
    }
    Ok((RootBundle { anchors }, keys))
}

impl RootBundle {
    /// The key of the leaf of `x5c` (base64 DER, leaf first), if the chain leads to a
    /// bundle certificate now.
    pub fn chain_key(&self, x5c: &[String]) -> Result<(DecodingKey, Algorithm), String> {
        let ders = x5c
            .iter()
            .map(|c| STANDARD.decode(c).map(CertificateDer::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("x5c: {e}"))?;
        let (leaf, intermediates) = ders.split_first().ok_or("x5c is empty")?;
        let end_entity = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("x5c: {e:?}"))?;
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                intermediates,
                UnixTime::now(),
                webpki::KeyUsage::required_if_present(SERVER_AUTH),
                None,
                None,
            )
            .map_err(|e| format!("x5c does not lead to a certificate of rootcertbundle: {e:?}"))?;
        let (key, algorithm, _) = certificate_key(leaf)?;
        Ok((key, algorithm))
    }
}

/// A certificate's public key, the algorithm tokens signed with it use, and its
/// SubjectPublicKeyInfo (DER).
fn certificate_key(der: &CertificateDer<'_>) -> Result<(DecodingKey, Algorithm, Vec<u8>), String> {
    use x509_parser::public_key::PublicKey;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    let spki = cert.public_key();
    // The key bits are what the verifiers take: a SEC1 point, or a PKCS#1 RSA key.
    let bits = &spki.subject_public_key.data;
    let (key, algorithm) = match spki.parsed().map_err(|e| format!("certificate key: {e}"))? {
        PublicKey::EC(point) if point.key_size() == 256 => (DecodingKey::from_ec_der(bits), Algorithm::ES256),
        PublicKey::EC(point) if point.key_size() == 384 => (DecodingKey::from_ec_der(bits), Algorithm::ES384),
        PublicKey::RSA(_) => (DecodingKey::from_rsa_der(bits), Algorithm::RS256),
        _ => return Err("certificate key: only P-256, P-384 and RSA keys sign tokens".into()),
    };
    Ok((key, algorithm, spki.raw.to_vec()))
}

/// libtrust's key id (what docker_auth puts in `kid`): the first 240 bits of the
/// SHA-256 of the SubjectPublicKeyInfo, in base32, in groups of four joined by `:`.
fn libtrust_key_id(spki: &[u8]) -> String {
    let digest = Sha256::digest(spki);
    let encoded = data_encoding::BASE32_NOPAD.encode(&digest[..30]);
    let groups: Vec<&str> =
        encoded.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).expect("base32 is ASCII")).collect();
    groups.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtrust_key_ids_are_twelve_groups_of_four() {
        let id = libtrust_key_id(b"any key");
        assert_eq!(id.len(), 12 * 4 + 11);
        assert!(id.split(':').all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())));
        assert_ne!(id, libtrust_key_id(b"another key"));
    }
}
