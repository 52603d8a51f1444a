//! Registry metadata on SQL (sqlx): repositories, blob links, manifests and what they
//! reference, tags, upload sessions, users, namespaces and roles, the token service's keys and
//! the audit log.
//!
//! One set of queries for every engine: they go through sqlx's `Any` driver and use only
//! SQL that SQLite and PostgreSQL share. Listing is keyset pagination over primary keys,
//! so a page costs a page whatever the repository holds.

mod access;
mod audit;
mod directory;
mod gc;
mod immutability;
mod namespaces;
mod store;

pub use access::{SigningKey, UserRecord, OIDC_STAMP_PREFIX, ROBOT_PREFIX};
pub use audit::{Actor, AuditEvent, AuditQuery};
pub use gc::Collectable;
pub use immutability::{is_signature_tag, Immutability, ImmutabilityRule, Refusal};
pub use namespaces::{Member, MemberKind, NameRange, Namespace, NamespaceVisibility, Role, Standing};
pub use store::*;
