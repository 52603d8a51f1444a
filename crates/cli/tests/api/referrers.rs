//! The referrers API: manifests whose `subject` is a given digest.

use crate::common::*;
use serde_json::{json, Value};

/// An artifact manifest (empty config) about `subject`.
fn artifact(empty: &Desc, layer: &Desc, artifact_type: Option<&str>, subject: &Desc, annotations: Value) -> Value {
    let mut m = image_manifest(OCI_MANIFEST, empty, std::slice::from_ref(layer));
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    m["subject"] = subject.json();
    m["annotations"] = annotations;
    m
}

/// The descriptor a referrers listing must show for a pushed manifest.
fn entry(d: &Desc, artifact_type: &str, annotations: Value) -> Value {
    let mut v = d.json();
    v["artifactType"] = json!(artifact_type);
    if !annotations.is_null() {
        v["annotations"] = annotations;
    }
    v
}

/// The listing's `manifests`, sorted by digest for comparison.
fn listed(r: &Resp) -> Vec<Value> {
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let mut m = v["manifests"].as_array().expect("manifests array").clone();
    m.sort_by_key(|e| e["digest"].as_str().unwrap().to_owned());
    m
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|e| e["digest"].as_str().unwrap().to_owned());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_listing_and_filter() {
    let s = Server::start().await;
    let subject = s.push_image("ref", "v1", "subject").await;
    let empty = s.push_blob_as("ref", EMPTY_TYPE, b"{}").await;
    let sig_blob = s.push_blob_as("ref", "application/vnd.example.sig.v1", b"signature").await;
    let sbom_config = s.push_blob_as("ref", "application/vnd.example.sbom.config+json", b"{\"sbom\":1}").await;
    let sbom_blob = s.push_blob_as("ref", "application/spdx+json", b"{\"spdx\":true}").await;

    let sig_ann =
        json!({ "org.example.kind": "signature", "org.opencontainers.image.created": "2024-01-01T00:00:00Z" });
    let sig = s
        .push_manifest(
            "ref",
            "sig",
            &artifact(&empty, &sig_blob, Some("application/vnd.example.sig"), &subject, sig_ann.clone()),
        )
        .await;
    // Without artifactType, the config's media type is the artifact type.
    let mut sbom_m = image_manifest(OCI_MANIFEST, &sbom_config, &[sbom_blob]);
    sbom_m["subject"] = subject.json();
    let sbom = s.push_manifest("ref", "sbom", &sbom_m).await;
    let mut idx = index_manifest(OCI_INDEX, std::slice::from_ref(&sig));
    idx["artifactType"] = json!("application/vnd.example.bundle");
    idx["subject"] = subject.json();
    idx["annotations"] = json!({ "bundle": "yes" });
    let bundle = s.push_manifest("ref", "bundle", &idx).await;
    // Unrelated manifests are not listed.
    s.push_image("ref", "unrelated", "unrelated").await;

    let path = format!("/v2/ref/referrers/{}", subject.digest);
    let r = s.get(&path).await;
    r.status(200).has("content-type", OCI_INDEX);
    assert!(r.opt_header("oci-filters-applied").is_none());
    assert_eq!(
        listed(&r),
        sorted(vec![
            entry(&sig, "application/vnd.example.sig", sig_ann.clone()),
            entry(&sbom, "application/vnd.example.sbom.config+json", Value::Null),
            entry(&bundle, "application/vnd.example.bundle", json!({ "bundle": "yes" })),
        ])
    );

    let r = s.get(&format!("{path}?artifactType=application/vnd.example.sig")).await;
    r.status(200).has("content-type", OCI_INDEX).has("oci-filters-applied", "artifactType");
    assert_eq!(listed(&r), vec![entry(&sig, "application/vnd.example.sig", sig_ann)]);

    let r = s.get(&format!("{path}?artifactType=application/vnd.example.none")).await;
    r.status(200).has("oci-filters-applied", "artifactType");
    assert!(listed(&r).is_empty());

    // A deleted referrer is no longer listed.
    s.delete(&format!("/v2/ref/manifests/{}", sbom.digest)).await.status(202);
    let digests: Vec<Value> = listed(&s.get(&path).await).iter().map(|e| e["digest"].clone()).collect();
    assert_eq!(digests.len(), 2);
    assert!(!digests.contains(&json!(sbom.digest)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_of_unknown_subject() {
    let s = Server::start().await;
    s.push_image("ref", "v1", "x").await;
    let r = s.get(&format!("/v2/ref/referrers/{}", sha256(b"no such manifest"))).await;
    r.status(200).has("content-type", OCI_INDEX);
    assert!(listed(&r).is_empty());
    s.get("/v2/ref/referrers/sha256:123").await.error(400, "DIGEST_INVALID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrer_pushed_before_its_subject() {
    let s = Server::start().await;
    let empty = s.push_blob_as("early", EMPTY_TYPE, b"{}").await;
    let future_subject = Desc::of(OCI_MANIFEST, b"{\"schemaVersion\":2,\"not\":\"pushed\"}");
    let m = artifact(&empty, &empty, Some("application/vnd.example.early"), &future_subject, json!({ "k": "v" }));
    let body = to_bytes(&m);
    s.put_manifest("early", "sig", OCI_MANIFEST, &body).await.status(201).has("oci-subject", &future_subject.digest);
    let r = s.get(&format!("/v2/early/referrers/{}", future_subject.digest)).await;
    r.status(200);
    assert_eq!(
        listed(&r),
        vec![entry(&Desc::of(OCI_MANIFEST, &body), "application/vnd.example.early", json!({ "k": "v" }))]
    );
    // Referrers are per repository.
    s.push_blob_as("other", EMPTY_TYPE, b"{}").await;
    let r = s.get(&format!("/v2/other/referrers/{}", future_subject.digest)).await;
    r.status(200);
    assert!(listed(&r).is_empty());
}
