//! Races only PostgreSQL can show: its write transactions run side by side under READ
//! COMMITTED, where SQLite runs one writer at a time. Each test forces the interleaving
//! with a third connection holding a row lock, and watches `pg_stat_activity` for who
//! waits, so nothing depends on timing. Skipped, with a message, unless
//! `BERTH_TEST_POSTGRES` names a server (`scripts/test.sh` starts one).

mod common;

use berth_metadata::{Actor, MetadataStore};
use berth_proto::Digest;
use common::{fresh_database, lock_waiters, manifest};
use sqlx::{Connection, Executor, PgConnection};

/// A tag pushed onto a manifest while the manifest is deleted ends with both (the push
/// came last) or neither (the delete came last), never with a tag listed that points at
/// nothing. The push is held at its tag by a third connection; the delete must then
/// wait for the push instead of deleting the manifest under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_pushed_while_its_manifest_is_deleted_never_dangles() {
    let Some(url) = fresh_database("dangling_tag").await else { return };
    let store = MetadataStore::open(&url).await.unwrap();
    let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
    assert!(store.hold_blob("first", &digest).await.unwrap());
    store.put_manifest("app", &manifest(&digest, vec![]), None, "first", &Actor::system()).await.unwrap();

    let mut blocker = PgConnection::connect(&url).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    blocker.execute("INSERT INTO tags SELECT id, 'v1', 'none', 0 FROM repositories WHERE name = 'app'").await.unwrap();
    let mut watcher = PgConnection::connect(&url).await.unwrap();

    let push = tokio::spawn({
        let (store, digest) = (store.clone(), digest.clone());
        async move {
            assert!(store.hold_blob("second", &digest).await.unwrap());
            store
                .put_manifest("app", &manifest(&digest, vec![]), Some("v1"), "second", &Actor::system())
                .await
                .map_err(|e| format!("{e:?}"))
        }
    });
    lock_waiters(&mut watcher, 1).await;
    let mut delete = tokio::spawn({
        let (store, digest) = (store.clone(), digest.clone());
        async move { store.delete_manifest("app", &digest, &Actor::system()).await }
    });
    // Either the delete waits for the push (correct), or it finishes under it.
    let deleted_early = tokio::select! {
        () = lock_waiters(&mut watcher, 2) => None,
        done = &mut delete => Some(done),
    };
    blocker.execute("ROLLBACK").await.unwrap();
    push.await.unwrap().unwrap();
    let deleted = match deleted_early {
        Some(done) => done,
        None => delete.await,
    };
    assert!(deleted.unwrap().unwrap(), "the manifest existed, so the delete deleted it");

    let repo = store.repository_id("app").await.unwrap().unwrap();
    let listed = store.tags(repo, "", 10).await.unwrap();
    let resolved = store.manifest_by_tag("app", "v1").await.unwrap();
    assert_eq!(
        listed.contains(&"v1".to_owned()),
        resolved.is_some(),
        "tag v1 listed: {listed:?}, resolves: {}",
        resolved.is_some()
    );
}

/// Instances started together on an empty database all come up: one runs the
/// migrations (under sqlx's advisory lock), the others wait and find the schema current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once() {
    let Some(url) = fresh_database("concurrent_start").await else { return };
    let opened = futures_util::future::join_all((0..6).map(|_| MetadataStore::open(&url))).await;
    for store in opened {
        store.unwrap();
    }
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&mut conn).await.unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres")).unwrap().count();
    assert_eq!(applied, files as i64);
}

/// A database URL that asks for TLS (`sslmode=require`, as managed PostgreSQL services do)
/// opens the store over an encrypted connection; one that pins the server to CAs that did
/// not sign its certificate (the system's public ones) is refused. `scripts/postgres.sh`
/// starts its server with TLS on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_url_that_asks_for_tls_gets_it() {
    let Some(url) = fresh_database("tls").await else { return };
    let required = format!("{url}?sslmode=require");
    MetadataStore::open(&required).await.expect("a store on a URL that requires TLS");
    let mut conn = PgConnection::connect(&required).await.unwrap();
    let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(encrypted, "sslmode=require connected in plain text");
    let public_cas = "/etc/ssl/certs/ca-certificates.crt";
    if std::path::Path::new(public_cas).exists() {
        let pinned = format!("{url}?sslmode=verify-ca&sslrootcert={public_cas}");
        assert!(MetadataStore::open(&pinned).await.is_err(), "a certificate no pinned CA signed was accepted");
    }
}
