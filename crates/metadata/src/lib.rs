//! Registry metadata on SQL (sqlx): repositories, blob links, manifests and what they
//! reference, tags, upload sessions, users and the token service's keys.
//!
//! One set of queries for every engine: they go through sqlx's `Any` driver and use only
//! SQL that SQLite and PostgreSQL share. Listing is keyset pagination over primary keys,
//! so a page costs a page whatever the repository holds.

mod access;
mod store;

pub use access::{SigningKey, UserRecord};
pub use store::*;
