//! Protocol types of the OCI Distribution Spec and Docker Registry HTTP API v2.
//!
//! Pure values and parsers: no I/O, no async. Everything a request names (repository,
//! tag, digest) is validated here before any other layer sees it, so storage paths are
//! only ever built from values that passed these grammars.

pub mod digest;
pub mod error;
pub mod listing;
pub mod manifest;
pub mod media;
pub mod path;
pub mod pattern;
pub mod range;
pub mod reference;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::ErrorCode;
pub use listing::{decode_query, ListQuery};
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use pattern::wildcard;
pub use range::ByteRange;
pub use reference::{Reference, RepositoryName, Tag};
