//! Tag lists and the catalog: byte order, `n`/`last` pagination and `Link` headers.

use crate::common::*;
use serde_json::{json, Value};

/// The target of a `Link: <...>; rel="next"` header, if present.
fn next_link(r: &Resp) -> Option<String> {
    let link = r.opt_header("link")?;
    assert!(link.ends_with("; rel=\"next\""), "Link {link:?}");
    let start = link.find('<').expect("Link without <") + 1;
    let end = link.find('>').expect("Link without >");
    Some(link[start..end].to_owned())
}

/// Follows `Link` headers from `first`, returning each page's `key` array and link.
async fn pages(s: &Server, first: &str, key: &str) -> Vec<(Value, Option<String>)> {
    let mut out = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(path) = next {
        let r = s.get(&path).await;
        r.status(200);
        assert!(r.header("content-type").starts_with("application/json"));
        next = next_link(&r);
        out.push((r.json()[key].clone(), next.clone()));
        assert!(out.len() < 20, "pagination does not end");
    }
    out
}

async fn push_tags(s: &Server, repo: &str, tags: &[&str]) {
    let m = s.push_image(repo, tags[0], repo).await;
    let body = s.get(&format!("/v2/{repo}/manifests/{}", m.digest)).await.body;
    for tag in &tags[1..] {
        s.put_manifest(repo, tag, OCI_MANIFEST, &body).await.status(201);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_in_byte_order() {
    let s = Server::start().await;
    push_tags(&s, "ordered/repo", &["b", "a", "a1", "B", "_z", "a-1", "a.1", "A_"]).await;
    let r = s.get("/v2/ordered/repo/tags/list").await;
    r.status(200);
    assert!(r.opt_header("link").is_none());
    assert_eq!(r.json(), json!({ "name": "ordered/repo", "tags": ["A_", "B", "_z", "a", "a-1", "a.1", "a1", "b"] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_pagination() {
    let s = Server::start().await;
    push_tags(&s, "paged", &["b", "a", "a1", "B", "_z"]).await;
    let got = pages(&s, "/v2/paged/tags/list?n=2", "tags").await;
    assert_eq!(
        got,
        vec![
            (json!(["B", "_z"]), Some("/v2/paged/tags/list?n=2&last=_z".to_owned())),
            (json!(["a", "a1"]), Some("/v2/paged/tags/list?n=2&last=a1".to_owned())),
            (json!(["b"]), None),
        ]
    );
    for (query, tags) in [
        ("n=5", json!(["B", "_z", "a", "a1", "b"])),
        ("n=100", json!(["B", "_z", "a", "a1", "b"])),
        ("last=a", json!(["a1", "b"])),
        ("n=1&last=a1", json!(["b"])),
        ("n=2&last=b", json!([])),
        ("last=zzz", json!([])),
    ] {
        let r = s.get(&format!("/v2/paged/tags/list?{query}")).await;
        r.status(200);
        assert_eq!(r.json()["tags"], tags, "{query}");
        assert!(r.opt_header("link").is_none(), "{query}: unexpected Link");
    }
    let r = s.get("/v2/paged/tags/list?n=4&last=B").await;
    assert_eq!(r.json()["tags"], json!(["_z", "a", "a1", "b"]));
    assert!(r.opt_header("link").is_none());
    let r = s.get("/v2/paged/tags/list?n=3&last=B").await;
    assert_eq!(r.json()["tags"], json!(["_z", "a", "a1"]));
    assert_eq!(next_link(&r).as_deref(), Some("/v2/paged/tags/list?n=3&last=a1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_of_unknown_repository() {
    let s = Server::start().await;
    s.get("/v2/nothing/here/tags/list").await.error(404, "NAME_UNKNOWN");
    s.get("/v2/nothing/here/tags/list?n=2").await.error(404, "NAME_UNKNOWN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog() {
    let s = Server::start().await;
    let repos = ["b", "a0", "a_b", "a/b", "a.b", "a-b", "c/d/e"];
    for repo in repos {
        s.push_image(repo, "latest", repo).await;
    }
    let sorted = json!(["a-b", "a.b", "a/b", "a0", "a_b", "b", "c/d/e"]);
    let r = s.get("/v2/_catalog").await;
    r.status(200);
    assert!(r.header("content-type").starts_with("application/json"));
    assert!(r.opt_header("link").is_none());
    assert_eq!(r.json(), json!({ "repositories": sorted }));

    let got = pages(&s, "/v2/_catalog?n=3", "repositories").await;
    assert_eq!(
        got,
        vec![
            (json!(["a-b", "a.b", "a/b"]), Some("/v2/_catalog?n=3&last=a/b".to_owned())),
            (json!(["a0", "a_b", "b"]), Some("/v2/_catalog?n=3&last=b".to_owned())),
            (json!(["c/d/e"]), None),
        ]
    );
    for (query, names) in [
        ("n=7", sorted.clone()),
        ("last=a_b", json!(["b", "c/d/e"])),
        ("n=2&last=a%2Fb", json!(["a0", "a_b"])),
        ("last=c/d/e", json!([])),
    ] {
        let r = s.get(&format!("/v2/_catalog?{query}")).await;
        r.status(200);
        assert_eq!(r.json()["repositories"], names, "{query}");
        if query.starts_with("n=2") {
            assert_eq!(next_link(&r).as_deref(), Some("/v2/_catalog?n=2&last=a_b"));
        } else {
            assert!(r.opt_header("link").is_none(), "{query}: unexpected Link");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_catalog() {
    let s = Server::start().await;
    let r = s.get("/v2/_catalog").await;
    r.status(200);
    assert_eq!(r.json(), json!({ "repositories": [] }));
    assert!(r.opt_header("link").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_page_size_is_rejected() {
    let s = Server::start().await;
    push_tags(&s, "paged/bad", &["a"]).await;
    for path in ["/v2/paged/bad/tags/list?n=abc", "/v2/paged/bad/tags/list?n=-1", "/v2/_catalog?n=x"] {
        s.get(path).await.error(400, "PAGINATION_NUMBER_INVALID");
    }
}
