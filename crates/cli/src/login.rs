//! `berth login`: signs a person in to a registry through its OpenID Connect provider
//! and hands back a registry password. The browser comes back to a one-shot listener on
//! loopback (RFC 8252), and the registry redeems the code, so the CLI holds no client
//! secret and never sees the ID token.

use anyhow::{bail, Context};
use axum::extract::Query;
use axum::routing::get;
use std::collections::HashMap;
use std::time::Duration;

/// How long the browser has to come back.
const SIGN_IN_TIME: Duration = Duration::from_secs(600);

/// A registry password, as `/auth/oidc/callback` answers.
#[derive(Debug, serde::Deserialize)]
pub struct Credential {
    pub username: String,
    pub password: String,
    pub expires_in: u64,
}

#[derive(serde::Deserialize)]
struct Start {
    authorization_url: String,
    login: String,
}

/// Signs in to `registry` (its base URL). The provider's URL is printed on stderr and,
/// with `open_browser`, handed to the desktop's opener.
pub async fn login(registry: &str, open_browser: bool) -> anyhow::Result<Credential> {
    let registry = registry.trim_end_matches('/');
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("listening on loopback")?;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let start: Start =
        post(&client, &format!("{registry}/auth/oidc/authorize"), serde_json::json!({ "redirect_uri": redirect_uri }))
            .await?;
    eprintln!("Open this URL in a browser to sign in:\n\n    {}\n", start.authorization_url);
    if open_browser {
        open(&start.authorization_url);
    }
    let params = tokio::time::timeout(SIGN_IN_TIME, one_redirect(listener))
        .await
        .context("the browser did not come back within 10 minutes")??;
    if let Some(error) = params.get("error") {
        bail!(
            "the provider refused the sign-in: {error}: {}",
            params.get("error_description").map_or("", String::as_str)
        );
    }
    let (Some(code), Some(state)) = (params.get("code"), params.get("state")) else {
        bail!("the browser came back without code and state");
    };
    let body = serde_json::json!({ "login": start.login, "code": code, "state": state });
    post(&client, &format!("{registry}/auth/oidc/callback"), body).await
}

async fn post<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    body: serde_json::Value,
) -> anyhow::Result<T> {
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("POST {url}"))?;
    if !status.is_success() {
        bail!("POST {url}: {status}: {}", error_message(&text));
    }
    serde_json::from_str(&text).with_context(|| format!("POST {url}: unexpected answer"))
}

/// The message of a registry error body, else the body.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    parsed
        .as_ref()
        .and_then(|v| v["errors"][0]["message"].as_str())
        .map_or_else(|| body.trim().to_owned(), str::to_owned)
}

/// Serves the loopback redirect once and returns its query parameters.
async fn one_redirect(listener: tokio::net::TcpListener) -> anyhow::Result<HashMap<String, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let app = axum::Router::new().route(
        "/callback",
        get(move |Query(params): Query<HashMap<String, String>>| {
            let tx = tx.clone();
            async move {
                // Only the first redirect counts; a second finds the channel full.
                let _ = tx.try_send(params);
                axum::response::Html("<p>Signed in. You may close this window and return to the terminal.</p>")
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut rx = rx;
    let params = rx.recv().await.context("the loopback listener stopped")?;
    server.abort();
    Ok(params)
}

/// Hands a URL to the desktop's opener; without one the printed URL is the way.
fn open(url: &str) {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    let spawned = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if spawned.is_err() {
        eprintln!("(no browser could be opened: open the URL yourself)");
    }
}
