//! Manifest validation: which kind a pushed document is and what it references.
//!
//! The registry keeps and serves the exact bytes it was given; this module only reads
//! them to check they are a well-formed manifest and to extract the references that the
//! metadata store records (blobs, child manifests, subject).

use crate::digest::Digest;
use crate::media;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI image manifest or Docker v2 schema 2: config + layers.
    Image,
    /// OCI image index or Docker manifest list: child manifests.
    Index,
}

/// A content descriptor as it appears in manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// What the registry needs to know of a manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub kind: ManifestKind,
    pub media_type: String,
    /// `artifactType`, or for image manifests without it the config's media type, as the
    /// referrers API reports it.
    pub artifact_type: Option<String>,
    pub subject: Option<Descriptor>,
    /// Blobs the repository must hold: the config and the non-foreign layers.
    pub blobs: Vec<Descriptor>,
    /// Child manifests the repository must hold (indexes only).
    pub children: Vec<Descriptor>,
    pub annotations: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

fn invalid(msg: impl Into<String>) -> ManifestError {
    ManifestError(msg.into())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    urls: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<Map<String, Value>>,
}

impl RawDescriptor {
    fn validate(self, what: &str) -> Result<Descriptor, ManifestError> {
        let media_type = self
            .media_type
            .filter(|m| !m.is_empty())
            .ok_or_else(|| invalid(format!("{what}: mediaType is required")))?;
        let digest = self
            .digest
            .ok_or_else(|| invalid(format!("{what}: digest is required")))?
            .parse()
            .map_err(|e| invalid(format!("{what}: {e}")))?;
        let size = self
            .size
            .and_then(|s| u64::try_from(s).ok())
            .ok_or_else(|| invalid(format!("{what}: size must be a non-negative integer")))?;
        Ok(Descriptor { media_type, digest, size })
    }
}

/// The media type a `Content-Type` header names, without parameters.
fn content_type_essence(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

impl Manifest {
    /// Parses and validates a manifest pushed with the given `Content-Type`.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
        if raw.schema_version != Some(2) {
            return Err(invalid("schemaVersion must be 2 (schema 1 manifests are not supported)"));
        }
        let header = content_type
            .map(content_type_essence)
            .filter(|ct| media::MANIFEST_TYPES.contains(ct) || *ct == media::DOCKER_MANIFEST_V1_SIGNED);
        let media_type = match (raw.media_type.as_deref(), header) {
            (Some(field), Some(h)) if field != h => {
                return Err(invalid(format!("mediaType {field:?} does not match Content-Type {h:?}")))
            }
            (Some(field), _) => field.to_owned(),
            (None, Some(h)) => h.to_owned(),
            (None, None) if raw.manifests.is_some() => media::OCI_INDEX.to_owned(),
            (None, None) => media::OCI_MANIFEST.to_owned(),
        };
        let kind = match media_type.as_str() {
            media::OCI_MANIFEST | media::DOCKER_MANIFEST => ManifestKind::Image,
            media::OCI_INDEX | media::DOCKER_MANIFEST_LIST => ManifestKind::Index,
            other => return Err(invalid(format!("unsupported manifest media type {other:?}"))),
        };
        let subject = raw.subject.map(|s| s.validate("subject")).transpose()?;
        let (blobs, children, artifact_type) = match kind {
            ManifestKind::Image => {
                if raw.manifests.is_some() {
                    return Err(invalid("an image manifest has no \"manifests\" field"));
                }
                let config = raw.config.ok_or_else(|| invalid("config is required"))?.validate("config")?;
                let layers = raw.layers.ok_or_else(|| invalid("layers is required"))?;
                let artifact_type = raw.artifact_type.clone().or_else(|| Some(config.media_type.clone()));
                let mut blobs = vec![config];
                for (i, l) in layers.into_iter().enumerate() {
                    let foreign = l.urls.as_ref().is_some_and(|u| !u.is_empty())
                        && l.media_type.as_deref().is_some_and(|m| media::FOREIGN_LAYER_TYPES.contains(&m));
                    let d = l.validate(&format!("layers[{i}]"))?;
                    if !foreign {
                        blobs.push(d);
                    }
                }
                (blobs, Vec::new(), artifact_type)
            }
            ManifestKind::Index => {
                if raw.config.is_some() || raw.layers.is_some() {
                    return Err(invalid("an index has no \"config\" or \"layers\" field"));
                }
                let manifests = raw.manifests.ok_or_else(|| invalid("manifests is required"))?;
                let children = manifests
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| m.validate(&format!("manifests[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                (Vec::new(), children, raw.artifact_type.clone())
            }
        };
        Ok(Manifest { kind, media_type, artifact_type, subject, blobs, children, annotations: raw.annotations })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const D2: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":2}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    #[test]
    fn image_manifest_references() {
        let m = Manifest::parse(image("").as_bytes(), Some(media::OCI_MANIFEST)).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.blobs.len(), 2);
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
        let with_subject = image(&format!(
            r#","artifactType":"application/x.sig","subject":{{"mediaType":"{}","digest":"{D1}","size":10}}"#,
            media::OCI_MANIFEST
        ));
        let m = Manifest::parse(with_subject.as_bytes(), None).unwrap();
        assert_eq!(m.subject.unwrap().digest.as_str(), D1);
        assert_eq!(m.artifact_type.as_deref(), Some("application/x.sig"));
    }

    #[test]
    fn index_children() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D1}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            media::OCI_MANIFEST
        );
        let m = Manifest::parse(idx.as_bytes(), Some(media::OCI_INDEX)).unwrap();
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.children.len(), 1);
        assert_eq!(m.media_type, media::OCI_INDEX);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "".to_string(),
            "[]".into(),
            "{".into(),
            r#"{"schemaVersion":1,"fsLayers":[]}"#.into(),
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.into(),
            image("").replace(D2, "sha256:nothex"),
            image("").replace("\"size\":2", "\"size\":-2"),
            image("").replace("\"size\":2", "\"size\":\"2\""),
        ] {
            assert!(Manifest::parse(bad.as_bytes(), None).is_err(), "{bad}");
        }
        let mismatch = Manifest::parse(image("").as_bytes(), Some(media::DOCKER_MANIFEST));
        assert!(mismatch.is_err());
    }
}
