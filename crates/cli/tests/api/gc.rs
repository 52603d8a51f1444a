//! Online garbage collection through the API: what a pass frees and what it keeps, the
//! writes that meet a collection in progress, crash leftovers, and many clients pushing,
//! moving, deleting and pulling while passes run back to back.

use crate::common::*;
use berth_registry::{GcOptions, GcReport};
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A pass that takes whatever is unreferenced now.
fn now() -> GcOptions {
    GcOptions { grace: Duration::ZERO, ..GcOptions::default() }
}

async fn pass(s: &Server, opts: GcOptions) -> GcReport {
    s.registry.collect_garbage(&opts).await.unwrap()
}

async fn stored(s: &Server, digest: &str) -> bool {
    s.registry.blob_store().stat(&digest.parse().unwrap()).await.unwrap().is_some()
}

fn freed(report: &GcReport) -> Vec<String> {
    let mut digests: Vec<String> = report.blobs.iter().map(|b| b.digest.clone()).collect();
    digests.sort();
    digests
}

fn sorted(mut digests: Vec<String>) -> Vec<String> {
    digests.sort();
    digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_frees_exactly_what_nothing_references() {
    let s = Server::start().await;
    let m = s.push_image("gc/app", "v1", "shared").await;
    let (config, layer) = s.push_image_blobs("gc/app", "shared").await;
    s.push_image("gc/other", "v1", "shared").await;
    let loose = s.push_blob("gc/app", b"pushed for a manifest that never came").await;
    s.delete(&format!("/v2/gc/app/manifests/{}", m.digest)).await.status(202);

    assert_eq!(pass(&s, GcOptions { dry_run: true, ..GcOptions::default() }).await, GcReport::default());
    let dry = pass(&s, GcOptions { dry_run: true, ..now() }).await;
    assert_eq!((freed(&dry), dry.bytes, dry.links), (vec![loose.digest.clone()], loose.size as u64, 3));
    assert!(stored(&s, &loose.digest).await, "a dry run deletes nothing");
    s.head(&format!("/v2/gc/app/blobs/{}", loose.digest)).await.status(200);

    let done = pass(&s, now()).await;
    assert_eq!((freed(&done), done.blob_count, done.bytes, done.links), (freed(&dry), 1, dry.bytes, 3));
    assert!(!stored(&s, &loose.digest).await);
    s.get(&format!("/v2/gc/app/blobs/{}", config.digest)).await.error(404, "BLOB_UNKNOWN");
    for d in [&config, &layer] {
        assert_eq!(sha256(&s.blob_bytes("gc/other", &d.digest).await), d.digest, "still used by gc/other");
    }
    assert_eq!(pass(&s, now()).await, GcReport::default(), "nothing left to do");

    s.delete(&format!("/v2/gc/other/manifests/{}", m.digest)).await.status(202);
    let last = pass(&s, now()).await;
    assert_eq!(freed(&last), sorted(vec![config.digest.clone(), layer.digest.clone(), m.digest.clone()]));
    for d in [&config.digest, &layer.digest, &m.digest] {
        assert!(!stored(&s, d).await, "{d} left in storage");
    }
    // The same image pushed again is whole.
    let again = s.push_image("gc/other", "v1", "shared").await;
    assert_eq!(again, m);
    assert_eq!(sha256(&s.blob_bytes("gc/other", &layer.digest).await), layer.digest);
}

/// A pass outdates what the read caches hold for the links it removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collected_link_is_gone_for_the_next_read() {
    let s = Server::start().await;
    let loose = s.push_blob("gc/cache", b"read, then collected").await;
    let other = Server::on_same(&s);
    for reader in [&s, &other] {
        reader.head(&format!("/v2/gc/cache/blobs/{}", loose.digest)).await.status(200);
    }
    pass(&s, now()).await;
    for reader in [&s, &other] {
        reader.head(&format!("/v2/gc/cache/blobs/{}", loose.digest)).await.status(404);
    }
}

/// An upload that completes while its digest's bytes are being deleted is refused with
/// a retryable error and keeps its session; once the pass has deleted the old bytes the
/// retry completes, and the blob is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_meeting_its_digests_collection_is_refused_then_completes() {
    let s = Server::start().await;
    let data = b"deleted and pushed again".to_vec();
    let blob = s.push_blob("gc/again", &data).await;
    s.delete(&format!("/v2/gc/again/blobs/{}", blob.digest)).await.status(202);
    let meta = s.registry.metadata();
    assert!(meta.decide_deletion(&blob.digest, Duration::ZERO, false).await.unwrap(), "decided, not yet deleted");

    let session = s.start_upload("gc/again").await;
    s.patch(&session, &data, None).await.status(202);
    let refused = s.finish(&session, &blob.digest, None).await;
    refused.error(503, "UNAVAILABLE");
    s.post_blob("gc/again", &blob.digest, &data).await.error(503, "UNAVAILABLE");
    let mount = format!("/v2/gc/elsewhere/blobs/uploads/?mount={}&from=gc/again", blob.digest);
    s.send(Method::POST, &mount, &[], None).await.status(202);

    let swept = pass(&s, now()).await;
    assert_eq!(freed(&swept), vec![blob.digest.clone()]);
    s.finish(&session, &blob.digest, None).await.status(201);
    assert_eq!(s.blob_bytes("gc/again", &blob.digest).await, data);
    assert!(stored(&s, &blob.digest).await);
}

/// Bytes published by a process that crashed before recording them are found by a
/// storage scan and collected once the grace period has passed since they were first
/// seen; recorded blobs are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_a_crash_left_unrecorded_are_collected_after_the_grace() {
    let s = Server::start().await;
    let kept = s.push_image("gc/crash", "v1", "kept").await;
    let orphan = bytes::Bytes::from_static(b"published, then the process died");
    let digest = sha256(&orphan);
    s.registry.blob_store().put_bytes(&digest.parse().unwrap(), orphan.clone()).await.unwrap();

    let scan = |grace| GcOptions { grace, scan_storage: true, ..GcOptions::default() };
    let first = pass(&s, scan(Duration::from_secs(3600))).await;
    assert_eq!((first.orphans_seen, first.blob_count), (1, 0));
    assert!(stored(&s, &digest).await, "too young to collect");
    let later = pass(&s, scan(Duration::ZERO)).await;
    assert_eq!((freed(&later), later.bytes), (vec![digest.clone()], orphan.len() as u64));
    assert!(!stored(&s, &digest).await);
    assert!(stored(&s, &kept.digest).await);
    s.get("/v2/gc/crash/manifests/v1").await.status(200);
}

/// A small, deterministic pseudo-random sequence (xorshift), so a failing run can be
/// replayed from its printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What a client saw acknowledged for one of its tags: the manifest and every digest
/// it needs (its blobs; an index's children and their blobs).
#[derive(Clone)]
struct Pushed {
    digest: String,
    blobs: Vec<String>,
    children: Vec<String>,
}

const CLIENTS: u64 = 8;
const ROUNDS: u64 = 20;
/// The soak's grace: longer than a push takes (layers first, then the manifest), so
/// clients are not starved, while what deletes leave behind is collected during the run.
const SOAK_GRACE: Duration = Duration::from_secs(1);
const ATTEMPTS: usize = 200;

/// Pushes one image made of `layers` (shared contents, so clients race on them) to
/// `repo`:`tag`, mounting from `mount_from` where it can, until the push is acknowledged:
/// a pass between a layer's upload and the manifest's push may take the unreferenced
/// layer (the manifest is then refused), or an upload may meet its digest's deletion
/// (503); both are retried, as clients do.
async fn push_until_acknowledged(s: &Server, repo: &str, tag: &str, layers: &[Vec<u8>], mount_from: &str) -> Pushed {
    let config = format!("{{\"tag\":\"{repo}:{tag}\"}}").into_bytes();
    for _ in 0..ATTEMPTS {
        let mut descs = Vec::new();
        let mut uploaded = true;
        for (i, data) in std::iter::once(&config).chain(layers).enumerate() {
            let d = Desc::of(if i == 0 { OCI_CONFIG } else { OCI_LAYER }, data);
            let mount = format!("/v2/{repo}/blobs/uploads/?mount={}&from={mount_from}", d.digest);
            let mounted = i % 2 == 1 && s.send(Method::POST, &mount, &[], None).await.status == 201;
            if !mounted && !upload_in_chunks(s, repo, &d.digest, data).await {
                uploaded = false;
                break;
            }
            descs.push(d);
        }
        if !uploaded {
            continue;
        }
        let manifest = image_manifest(OCI_MANIFEST, &descs[0], &descs[1..]);
        let body = to_bytes(&manifest);
        let r = s.put_manifest(repo, tag, OCI_MANIFEST, &body).await;
        match r.status {
            201 => {
                return Pushed {
                    digest: sha256(&body),
                    blobs: descs.into_iter().map(|d| d.digest).collect(),
                    children: Vec::new(),
                }
            }
            400 | 503 => continue,
            other => panic!("manifest push answered {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    panic!("{repo}:{tag} was never acknowledged in {ATTEMPTS} attempts");
}

/// A chunked upload (two chunks); false if the completion met a collection (503).
async fn upload_in_chunks(s: &Server, repo: &str, digest: &str, data: &[u8]) -> bool {
    let session = s.start_upload(repo).await;
    let half = data.len() / 2;
    s.patch(&session, &data[..half], None).await.status(202);
    let r = s.finish(&session, digest, Some(&data[half..])).await;
    match r.status {
        201 => true,
        503 => false,
        other => panic!("upload completion answered {other}: {}", String::from_utf8_lossy(&r.body)),
    }
}

/// An index over two images pushed under `tag`: its children are untagged, and kept.
async fn push_index(s: &Server, repo: &str, tag: &str, a: &Pushed, b: &Pushed) -> Option<Pushed> {
    let children: Vec<Desc> =
        [a, b].iter().map(|p| Desc { media_type: OCI_MANIFEST.into(), digest: p.digest.clone(), size: 0 }).collect();
    let mut sized = Vec::new();
    for c in children {
        let r = s.head(&format!("/v2/{repo}/manifests/{}", c.digest)).await;
        if r.status != 200 {
            return None;
        }
        sized.push(Desc { size: r.header("content-length").parse().unwrap(), ..c });
    }
    let body = to_bytes(&index_manifest(OCI_INDEX, &sized));
    let r = s.put_manifest(repo, tag, OCI_INDEX, &body).await;
    (r.status == 201).then(|| Pushed {
        digest: sha256(&body),
        blobs: a.blobs.iter().chain(&b.blobs).cloned().collect(),
        children: vec![a.digest.clone(), b.digest.clone()],
    })
}

/// Every acknowledged, still-tagged image pulls whole: the tag names the acknowledged
/// manifest and every blob it needs reads back with its digest.
async fn verify(s: &Server, model: &BTreeMap<(String, String), Pushed>) {
    for ((repo, tag), p) in model {
        let accept = format!("{OCI_MANIFEST},{OCI_INDEX}");
        let r = s.get_with(&format!("/v2/{repo}/manifests/{tag}"), &[("accept", &accept)]).await;
        r.status(200);
        assert_eq!(sha256(&r.body), p.digest, "{repo}:{tag} names another manifest");
        for child in &p.children {
            s.get(&format!("/v2/{repo}/manifests/{child}")).await.status(200);
        }
        for blob in &p.blobs {
            let r = s.get(&format!("/v2/{repo}/blobs/{blob}")).await;
            assert_eq!(r.status, 200, "{repo}:{tag} lost {blob}");
            assert_eq!(sha256(&r.body), *blob, "{repo}:{tag}: {blob} has other bytes");
        }
    }
}

/// The model-based check of collection under load: clients push images that share
/// layers (chunked uploads, mounts), move tags, push indexes, delete tags and
/// manifests, while passes with a grace of a second run back to back. Every read of an
/// acknowledged image during and after the run must find it whole. Then every tagged
/// manifest is deleted, and after a pass the store holds exactly the recorded blobs, and
/// none of those is unreferenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_pulls_and_deletes_racing_collection_lose_nothing() {
    let seed = std::env::var("BERTH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("collection under load: seed {seed} (BERTH_SEED={seed} replays the clients' choices)");
    let s = Arc::new(Server::start().await);
    let shared: Arc<Vec<Vec<u8>>> =
        Arc::new((0..4).map(|i| format!("shared layer {i}").repeat(50).into_bytes()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let (passes, collected) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let collector = tokio::spawn({
        let (s, stop, passes, collected) = (s.clone(), stop.clone(), passes.clone(), collected.clone());
        async move {
            while !stop.load(Ordering::Relaxed) || passes.load(Ordering::Relaxed) == 0 {
                let r = pass(&s, GcOptions { grace: SOAK_GRACE, ..GcOptions::default() }).await;
                passes.fetch_add(1, Ordering::Relaxed);
                collected.fetch_add(r.blob_count, Ordering::Relaxed);
            }
        }
    });
    let clients = (0..CLIENTS).map(|c| {
        let (s, shared) = (s.clone(), shared.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_mul(c + 1) | 1);
            let mut model: BTreeMap<(String, String), Pushed> = BTreeMap::new();
            for round in 0..ROUNDS {
                let repo = format!("soak/r{}", rng.below(3));
                let tag = format!("c{c}-t{}", rng.below(3));
                let key = (repo.clone(), tag.clone());
                match rng.below(10) {
                    0 if model.contains_key(&key) => {
                        s.delete(&format!("/v2/{repo}/manifests/{tag}")).await.status(202);
                        model.remove(&key);
                    }
                    1 if model.contains_key(&key) => {
                        let digest = model[&key].digest.clone();
                        let r = s.delete(&format!("/v2/{repo}/manifests/{digest}")).await;
                        assert!(r.status == 202 || r.status == 404, "manifest delete answered {}", r.status);
                        // Other tags of this client on that digest went with it.
                        model.retain(|(r, _), p| !(r == &repo && (p.digest == digest || p.children.contains(&digest))));
                    }
                    2 => {
                        let layers = [shared[rng.below(4) as usize].clone()];
                        let a = push_until_acknowledged(&s, &repo, &format!("{tag}-a"), &layers, "soak/r0").await;
                        model.insert((repo.clone(), format!("{tag}-a")), a.clone());
                        let unique = format!("c{c} round {round} b").into_bytes();
                        let b = push_until_acknowledged(&s, &repo, &format!("{tag}-b"), &[unique], "soak/r1").await;
                        model.insert((repo.clone(), format!("{tag}-b")), b.clone());
                        if let Some(index) = push_index(&s, &repo, &tag, &a, &b).await {
                            model.insert(key, index);
                        }
                    }
                    _ => {
                        let layers =
                            [shared[rng.below(4) as usize].clone(), format!("c{c} round {round}").into_bytes()];
                        let p = push_until_acknowledged(&s, &repo, &tag, &layers, "soak/r2").await;
                        model.insert(key, p);
                    }
                }
                let current: BTreeMap<_, _> =
                    model.iter().filter(|((r, _), _)| r == &repo).map(|(k, v)| (k.clone(), v.clone())).collect();
                verify(&s, &current).await;
            }
            model
        })
    });
    let models: Vec<BTreeMap<(String, String), Pushed>> =
        futures_util::future::join_all(clients).await.into_iter().map(Result::unwrap).collect();
    stop.store(true, Ordering::Relaxed);
    collector.await.unwrap();
    eprintln!(
        "{} passes collected {} blobs under load",
        passes.load(Ordering::Relaxed),
        collected.load(Ordering::Relaxed)
    );
    let mut all = BTreeMap::new();
    for m in &models {
        all.extend(m.clone());
    }
    verify(&s, &all).await;

    // Drain: one pass after the deletes leaves objects and records equal.
    for repo in ["soak/r0", "soak/r1", "soak/r2"] {
        loop {
            let tags = s.get(&format!("/v2/{repo}/tags/list")).await;
            let listed: Vec<Value> =
                if tags.status == 200 { tags.json()["tags"].as_array().cloned().unwrap_or_default() } else { vec![] };
            let Some(tag) = listed.first().and_then(Value::as_str) else { break };
            let r = s.head(&format!("/v2/{repo}/manifests/{tag}")).await;
            let digest = r.header("docker-content-digest").to_owned();
            s.delete(&format!("/v2/{repo}/manifests/{digest}")).await.status(202);
        }
    }
    pass(&s, now()).await;
    let listed: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(s.registry.blob_store().list_blobs()).await;
    let left: Vec<String> = listed.into_iter().map(|r| r.unwrap().0.to_string()).collect();
    let recorded = s.registry.metadata().known_blobs(&left).await.unwrap();
    assert_eq!(sorted(left.clone()), sorted(recorded), "objects in storage without a record");
    assert!(
        s.registry.metadata().collectable_blobs(Duration::ZERO, "", 10).await.unwrap().is_empty(),
        "recorded blobs nothing references: {left:?}"
    );
}

/// Under an untagged policy a pass deletes the manifests no tag names and, in the same
/// pass, the blobs only they used; a tagged image beside them stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untagged_policy_frees_untagged_images_in_one_pass() {
    let s = Server::start().await;
    let old = s.push_image("team/app", "latest", "old").await;
    let (old_config, old_layer) = s.push_image_blobs("team/app", "old").await;
    let new = s.push_image("team/app", "latest", "new").await;
    s.get(&format!("/v2/team/app/manifests/{}", old.digest)).await.status(200);
    let policy = GcOptions { untagged: vec![("team".into(), Duration::ZERO)], ..now() };
    assert_eq!(pass(&s, GcOptions { untagged: vec![], ..now() }).await, GcReport::default(), "kept by default");
    let done = pass(&s, policy).await;
    assert_eq!(done.manifests, 1);
    assert_eq!(freed(&done), sorted(vec![old.digest.clone(), old_config.digest, old_layer.digest]));
    s.get(&format!("/v2/team/app/manifests/{}", old.digest)).await.error(404, "MANIFEST_UNKNOWN");
    let r = s.get("/v2/team/app/manifests/latest").await;
    assert_eq!(sha256(&r.status(200).body), new.digest);
}
