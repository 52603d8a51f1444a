//! The garbage-collection protocol, step by step: each test plays one interleaving of
//! collection against a writer (upload completion, mount, manifest push) by calling the
//! steps in that order, on SQLite and, with `BERTH_TEST_POSTGRES`, on PostgreSQL.

mod common;

use berth_metadata::{Actor, Collectable, MetadataStore, NewManifest, PutManifestError};
use berth_proto::Digest;
use common::{fresh_database, lock_waiters, manifest};
use sqlx::{AnyConnection, Connection, Executor, PgConnection};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
const NOW: Duration = Duration::ZERO;

/// A store on every engine the run has, with its URL: SQLite in a temporary directory
/// (kept while the store lives), and a fresh PostgreSQL database when
/// `BERTH_TEST_POSTGRES` names a server.
async fn stores(test: &str) -> Vec<(MetadataStore, String, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/m.db", dir.path().display());
    let mut all = vec![(MetadataStore::open(&url).await.unwrap(), url, Some(dir))];
    if let Some(url) = fresh_database(test).await {
        all.push((MetadataStore::open(&url).await.unwrap(), url, None));
    }
    all
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres")
}

fn digest(n: u8) -> Digest {
    format!("sha256:{}", format!("{n:02x}").repeat(32)).parse().unwrap()
}

/// Uploads `d` into `repo` as a client would: session, hold, commit.
async fn upload(store: &MetadataStore, repo: &str, d: &Digest) {
    let id = uuid::Uuid::new_v4().to_string();
    assert!(store.create_upload(&id, repo, 100, 100).await.unwrap());
    assert!(store.hold_blob(&id, d).await.unwrap(), "{d} can be held");
    assert!(store.commit_blob(repo, d, 10, &id).await.unwrap(), "the upload of {d} commits");
}

async fn push(
    store: &MetadataStore,
    repo: &str,
    m: &NewManifest<'_>,
    tag: Option<&str>,
) -> Result<(), PutManifestError> {
    let hold = uuid::Uuid::new_v4().to_string();
    assert!(store.hold_blob(&hold, m.digest).await.unwrap());
    store.put_manifest(repo, m, tag, &hold, &Actor::system()).await
}

async fn collectable(store: &MetadataStore, grace: Duration) -> Vec<String> {
    store.collectable_blobs(grace, "", 100).await.unwrap().into_iter().map(|c| c.digest).collect()
}

/// A full pass on metadata: links, then decisions (the registry then deletes bytes).
async fn decide_all(store: &MetadataStore, grace: Duration) -> Vec<String> {
    store.collect_links(grace, false).await.unwrap();
    let mut decided = Vec::new();
    for d in collectable(store, grace).await {
        if store.decide_deletion(&d, grace, false).await.unwrap() {
            decided.push(d);
        }
    }
    decided
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_go_only_when_unreferenced_and_older_than_the_grace() {
    for (store, _, _dir) in stores("gc_links").await {
        let (layer, loose, m) = (digest(1), digest(2), digest(3));
        upload(&store, "app", &layer).await;
        upload(&store, "app", &loose).await;
        push(&store, "app", &manifest(&m, vec![&layer]), Some("v1")).await.unwrap();
        assert_eq!(store.collect_links(HOUR, false).await.unwrap().1, 0, "young links stay");
        assert!(collectable(&store, HOUR).await.is_empty());
        assert_eq!(collectable(&store, NOW).await, vec![loose.to_string()], "the dry run's answer");
        let (repos, removed) = store.collect_links(NOW, false).await.unwrap();
        assert_eq!((repos, removed), (vec!["app".to_owned()], 1), "only the unreferenced link goes");
        assert_eq!(store.linked_blob("app", &layer).await.unwrap(), Some(10));
        assert_eq!(store.linked_blob("app", &loose).await.unwrap(), None);
        assert!(store.decide_deletion(loose.as_str(), NOW, false).await.unwrap());
        assert!(!store.decide_deletion(layer.as_str(), NOW, false).await.unwrap(), "a referenced blob stays");
        let pending = store.pending_deletions(10).await.unwrap();
        assert_eq!(pending, vec![Collectable { digest: loose.to_string(), size: 10 }]);
    }
}

/// A blob shared by two repositories stays until the last manifest that uses it goes;
/// a manifest's own copy stays until its last row goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_blobs_and_manifest_copies_go_with_their_last_reference() {
    for (store, _, _dir) in stores("gc_shared").await {
        let (layer, m) = (digest(4), digest(5));
        for repo in ["a", "b"] {
            upload(&store, repo, &layer).await;
            push(&store, repo, &manifest(&m, vec![&layer]), Some("v1")).await.unwrap();
        }
        assert!(store.delete_manifest("a", &m, &Actor::system()).await.unwrap());
        assert!(decide_all(&store, NOW).await.is_empty(), "b still uses both");
        assert_eq!(store.linked_blob("a", &layer).await.unwrap(), None, "a's link went with a's manifest");
        assert!(store.delete_manifest("b", &m, &Actor::system()).await.unwrap());
        let mut decided = decide_all(&store, NOW).await;
        decided.sort();
        assert_eq!(decided, vec![layer.to_string(), m.to_string()]);
    }
}

/// Upload completion holds the digest before it publishes: a pass between publish and
/// commit leaves the blob alone, even though its old row has no link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_between_publish_and_commit_keeps_the_blob() {
    for (store, _, _dir) in stores("gc_held").await {
        let d = digest(6);
        upload(&store, "app", &d).await;
        assert!(store.unlink_blob("app", &d, &Actor::system()).await.unwrap());
        let id = uuid::Uuid::new_v4().to_string();
        store.create_upload(&id, "app", 100, 100).await.unwrap();
        assert!(store.hold_blob(&id, &d).await.unwrap());
        // ... the bytes are published here ...
        assert!(collectable(&store, NOW).await.is_empty(), "a held blob is not offered");
        assert!(!store.decide_deletion(d.as_str(), NOW, false).await.unwrap(), "nor decided");
        assert!(store.commit_blob("app", &d, 10, &id).await.unwrap());
        assert_eq!(store.linked_blob("app", &d).await.unwrap(), Some(10));
        assert!(store.pending_deletions(10).await.unwrap().is_empty());
    }
}

/// A writer that stalls past its hold's lease loses it; a pass may then decide on the
/// digest, and the writer's commit fails instead of linking bytes being deleted. While
/// the tombstone stands nobody may hold the digest; once the bytes are gone they may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_whose_hold_expired_cannot_commit() {
    for (store, _, _dir) in stores("gc_expired").await {
        let d = digest(7);
        upload(&store, "app", &d).await;
        store.unlink_blob("app", &d, &Actor::system()).await.unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        store.create_upload(&id, "app", 100, 100).await.unwrap();
        assert!(store.hold_blob(&id, &d).await.unwrap());
        assert_eq!(store.expire_holds(HOUR).await.unwrap(), 0, "a young hold stays");
        assert_eq!(store.expire_holds(NOW).await.unwrap(), 1);
        assert!(store.decide_deletion(d.as_str(), NOW, false).await.unwrap());
        assert!(!store.commit_blob("app", &d, 10, &id).await.unwrap(), "the commit must fail");
        assert_eq!(store.linked_blob("app", &d).await.unwrap(), None);
        assert!(!store.hold_blob("next", &d).await.unwrap(), "no hold while the bytes are being deleted");
        assert!(!store.mount_blob("other", &d).await.unwrap(), "no mount either");
        let m = digest(8);
        store.finish_deletion(d.as_str()).await.unwrap();
        assert!(store.hold_blob("next", &d).await.unwrap(), "after the delete the digest is writable again");
        assert!(store.commit_blob("app", &d, 10, "next").await.unwrap());
        push(&store, "app", &manifest(&m, vec![&d]), Some("v1")).await.unwrap();
    }
}

/// A manifest push whose hold expired is refused, and leaves no manifest behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_push_whose_hold_expired_is_refused() {
    for (store, _, _dir) in stores("gc_manifest_hold").await {
        let (layer, m) = (digest(9), digest(10));
        upload(&store, "app", &layer).await;
        assert!(store.hold_blob("push", &m).await.unwrap());
        store.expire_holds(NOW).await.unwrap();
        let put = store.put_manifest("app", &manifest(&m, vec![&layer]), Some("v1"), "push", &Actor::system()).await;
        assert!(matches!(put, Err(PutManifestError::HoldLost)), "{put:?}");
        assert!(store.manifest_by_tag("app", "v1").await.unwrap().is_none());
    }
}

/// Objects a listing found without a row are decided only after the grace period, and
/// never once a row exists for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_orphans_wait_for_the_grace_and_yield_to_rows() {
    for (store, _, _dir) in stores("gc_orphans").await {
        let (orphan, known) = (digest(11), digest(12));
        upload(&store, "app", &known).await;
        let found = [orphan.clone(), known.clone()].map(|d| Collectable { digest: d.to_string(), size: 3 });
        assert_eq!(store.known_blobs(&[orphan.to_string(), known.to_string()]).await.unwrap(), vec![known.to_string()]);
        assert_eq!(store.note_orphans(&found).await.unwrap(), 1, "only the digest without a row");
        assert_eq!(store.note_orphans(&found).await.unwrap(), 0, "first sighting counts");
        assert!(store.due_orphans(HOUR, "", 10).await.unwrap().is_empty());
        assert!(!store.decide_deletion(orphan.as_str(), HOUR, true).await.unwrap(), "too young");
        assert_eq!(store.due_orphans(NOW, "", 10).await.unwrap(), vec![found[0].clone()]);
        assert!(!store.decide_deletion(known.as_str(), NOW, true).await.unwrap(), "a digest with a row is no orphan");
        assert!(store.decide_deletion(orphan.as_str(), NOW, true).await.unwrap());
        assert!(store.due_orphans(NOW, "", 10).await.unwrap().is_empty(), "decided sightings are done");
        assert_eq!(store.pending_deletions(10).await.unwrap(), vec![found[0].clone()]);
    }
}

/// A re-link (an upload or mount of a blob the repository already has) renews the link,
/// so a pass with a grace period does not take a layer that was just pushed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relinking_renews_a_link() {
    for (store, url, _dir) in stores("gc_relink").await {
        let d = digest(13);
        upload(&store, "app", &d).await;
        sqlx::any::install_default_drivers();
        let mut conn = AnyConnection::connect(&url).await.unwrap();
        conn.execute("UPDATE repository_blobs SET created_at = created_at - 7200000").await.unwrap();
        assert_eq!(collectable(&store, HOUR).await, vec![d.to_string()], "two hours old");
        assert!(store.mount_blob("app", &d).await.unwrap());
        assert!(collectable(&store, HOUR).await.is_empty(), "renewed by the mount");
    }
}

/// On PostgreSQL: a pass never removes a link under a manifest push that is checking
/// it. The push is held at its tag by a third connection while it holds the link; the
/// pass skips the link instead of deleting it, and after the push commits the link is
/// referenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_checked_by_a_manifest_push_is_not_collected() {
    for (store, url, _dir) in stores("gc_link_race").await {
        if !is_postgres(&url) {
            continue;
        }
        let (layer, m) = (digest(14), digest(15));
        upload(&store, "app", &layer).await;
        let mut blocker = PgConnection::connect(&url).await.unwrap();
        blocker.execute("BEGIN").await.unwrap();
        blocker
            .execute("INSERT INTO tags SELECT id, 'v1', 'none', 0 FROM repositories WHERE name = 'app'")
            .await
            .unwrap();
        let mut watcher = PgConnection::connect(&url).await.unwrap();
        let pushed = tokio::spawn({
            let (store, layer, m) = (store.clone(), layer.clone(), m.clone());
            async move { push(&store, "app", &manifest(&m, vec![&layer]), Some("v1")).await.map_err(|e| format!("{e:?}")) }
        });
        lock_waiters(&mut watcher, 1).await;
        let (_, removed) = store.collect_links(NOW, false).await.unwrap();
        assert_eq!(removed, 0, "the link the push holds was collected");
        blocker.execute("ROLLBACK").await.unwrap();
        pushed.await.unwrap().unwrap();
        assert_eq!(store.collect_links(NOW, false).await.unwrap().1, 0, "referenced now");
        assert_eq!(store.linked_blob("app", &layer).await.unwrap(), Some(10));
    }
}

/// On PostgreSQL: a decision does not wait for, or run beside, a writer of the same
/// digest; it gives up and a later pass decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_gives_way_to_a_writer_of_its_digest() {
    for (store, url, _dir) in stores("gc_decision_lock").await {
        if !is_postgres(&url) {
            continue;
        }
        let d = digest(16);
        upload(&store, "app", &d).await;
        store.unlink_blob("app", &d, &Actor::system()).await.unwrap();
        let mut writer = PgConnection::connect(&url).await.unwrap();
        let key = i64::from_str_radix(&d.hex()[..16], 16).unwrap();
        writer.execute("BEGIN").await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(key).execute(&mut writer).await.unwrap();
        assert!(!store.decide_deletion(d.as_str(), NOW, false).await.unwrap(), "decided under a writer");
        writer.execute("COMMIT").await.unwrap();
        assert!(store.decide_deletion(d.as_str(), NOW, false).await.unwrap());
    }
}

/// Untagged manifests go under a policy, a grace period after their push, and never
/// while an index of their repository has them as a child or while their subject is
/// there: an untagged tree goes from the top down. Other namespaces and
/// tagged manifests are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_manifests_go_top_down_and_keep_what_kept_manifests_need() {
    for (store, _, _dir) in stores("gc_untagged").await {
        let [a, b, index, loose, sig, stray, absent, tagged, elsewhere] =
            [20, 21, 22, 23, 24, 25, 26, 27, 28].map(digest);
        for m in [&a, &b, &loose] {
            push(&store, "ns/app", &manifest(m, vec![]), None).await.unwrap();
        }
        let multi = NewManifest { children: vec![&a, &b], ..manifest(&index, vec![]) };
        push(&store, "ns/app", &multi, Some("multi")).await.unwrap();
        push(&store, "ns/app", &NewManifest { subject: Some(&a), ..manifest(&sig, vec![]) }, None).await.unwrap();
        let orphaned = NewManifest { subject: Some(&absent), ..manifest(&stray, vec![]) };
        push(&store, "ns/app", &orphaned, None).await.unwrap();
        push(&store, "ns/app", &manifest(&tagged, vec![]), Some("v1")).await.unwrap();
        push(&store, "other/app", &manifest(&elsewhere, vec![]), None).await.unwrap();
        let present = |repo: &'static str, d: Digest| {
            let store = store.clone();
            async move { store.manifest_by_digest(repo, &d).await.unwrap().is_some() }
        };

        assert_eq!(store.collect_untagged("ns", HOUR, false).await.unwrap().1, 0, "within the grace");
        assert_eq!(store.collect_untagged("ns", NOW, true).await.unwrap().1, 2, "the dry run's count");
        assert!(present("ns/app", loose.clone()).await, "a dry run deletes nothing");
        assert_eq!(store.collect_untagged("ns", NOW, false).await.unwrap(), (vec!["ns/app".to_owned()], 2));
        assert!(!present("ns/app", loose.clone()).await && !present("ns/app", stray.clone()).await);
        for kept in [&a, &b, &index, &sig, &tagged] {
            assert!(present("ns/app", kept.clone()).await, "{kept} is needed");
        }
        assert!(present("other/app", elsewhere.clone()).await, "another namespace");

        assert!(store.delete_tag("ns/app", "multi", &Actor::system()).await.unwrap());
        let mut passes = Vec::new();
        for _ in 0..4 {
            passes.push(store.collect_untagged("ns", NOW, false).await.unwrap().1);
        }
        // The index first; its children and their referrer in that pass (a later page
        // already sees the index gone) or the next ones.
        assert_eq!((passes.iter().sum::<u64>(), passes[3]), (4, 0), "passes freed {passes:?}");
        assert!(present("ns/app", tagged.clone()).await);
        assert_eq!(store.collect_untagged("", NOW, false).await.unwrap().1, 1, "\"\" is every repository");
    }
}
