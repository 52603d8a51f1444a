//! What the metadata tests share: databases on the test PostgreSQL server, and waiting
//! for lock waits.
#![allow(dead_code)] // each test binary uses its own part

use berth_metadata::NewManifest;
use berth_proto::Digest;
use sqlx::{Connection, Executor, PgConnection};
use std::time::Duration;

/// A new, empty database on the test server.
pub async fn fresh_database(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var("BERTH_TEST_POSTGRES") else {
        eprintln!("{test}: skipped, BERTH_TEST_POSTGRES is not set");
        return None;
    };
    let name = format!("{test}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&admin).await.unwrap();
    conn.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    Some(format!("{}/{name}", admin.rsplit_once('/').unwrap().0))
}

/// Returns once at least `n` sessions of this database wait for a lock (polled: the
/// condition, not the interval, is what the test waits for).
pub async fn lock_waiters(conn: &mut PgConnection, n: i64) {
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if waiting >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// An image manifest row with `blobs` as its references (the bytes do not matter here).
pub fn manifest<'a>(digest: &'a Digest, blobs: Vec<&'a Digest>) -> NewManifest<'a> {
    NewManifest {
        digest,
        media_type: "application/vnd.oci.image.manifest.v1+json",
        artifact_type: None,
        subject: None,
        annotations: None,
        content: b"{}",
        blobs,
        children: vec![],
    }
}
