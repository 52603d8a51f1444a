//! HTTP API tests against a real Berth server on an ephemeral port. One test binary
//! (modules per area) so the suite links once.

mod common;

mod access;
mod auth;
mod blobs;
mod concurrency;
mod consistency;
mod errors;
mod gc;
mod immutability;
mod limits;
mod listing;
mod manifests;
mod referrers;
mod uploads;
