//! `berth admin`: the admin API (`/api/v1`) from a terminal, and `berth admin bootstrap`,
//! which works on the host's database directly for the first administrator (or one
//! locked out). Each remote command is one request; answers are printed as JSON so
//! scripts can read them.

use anyhow::{bail, Context};
use berth_metadata::{Actor, MetadataStore, UserRecord};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;

#[derive(Args)]
pub struct Admin {
    /// The registry's base URL.
    #[arg(long, env = "BERTH_REGISTRY", default_value = "http://127.0.0.1:5000", global = true)]
    registry: String,
    /// Who acts (an administrator, or a namespace admin for their namespaces); the
    /// password comes from BERTH_PASSWORD.
    #[arg(long, env = "BERTH_USER", global = true)]
    user: Option<String>,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// People (and robots).
    #[command(subcommand)]
    Users(Users),
    /// Robot accounts for CI: scoped to namespaces, with an expiry.
    #[command(subcommand)]
    Robots(Robots),
    /// Teams of users, which namespaces grant roles to.
    #[command(subcommand)]
    Teams(Teams),
    /// Namespaces (the leading components of repository names) and their members' roles.
    #[command(subcommand)]
    Namespaces(Namespaces),
    /// The audit log, newest first.
    Audit {
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Who you are signed in as.
    Me,
    /// Run a garbage-collection pass on the server now and print its report.
    Gc {
        #[arg(long)]
        dry_run: bool,
        /// Also list the store for objects without a record.
        #[arg(long)]
        scan_storage: bool,
    },
    /// On the registry's host: create an administrator in the database (or make an
    /// existing user one, with a new password), with no server and no sign-in. The
    /// password is read from stdin, or made up and printed. On SQLite, stop the server
    /// first (one process owns the database); on PostgreSQL, any time.
    Bootstrap {
        name: String,
        /// The server's configuration file (for its database).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum Users {
    List,
    Show {
        name: String,
    },
    /// The password is read from stdin, or made up and printed; without one
    /// (`--no-password`) the user signs in elsewhere (htpasswd, LDAP, OIDC).
    Create {
        name: String,
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
    },
    /// Changes the administrator flag and/or the password (read from stdin).
    Set {
        name: String,
        #[arg(long)]
        admin: Option<bool>,
        #[arg(long)]
        password_stdin: bool,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum Robots {
    /// Prints the robot's secret: it is shown this once.
    Create {
        name: String,
        /// How long it lives (`30d`, `12h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Duration,
        /// NAMESPACE=ROLE (reader, developer, maintainer, admin); repeatable.
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
    },
    /// Revokes a robot (`robot$NAME`).
    Delete { name: String },
}

#[derive(Subcommand)]
enum Teams {
    List,
    Show {
        name: String,
    },
    Create {
        name: String,
    },
    Delete {
        name: String,
    },
    Add {
        team: String,
        user: String,
    },
    Remove {
        team: String,
        user: String,
    },
    /// Makes the team mirror a directory (LDAP) or OIDC group; without GROUP, stops.
    Mirror {
        team: String,
        group: Option<String>,
    },
}

#[derive(Subcommand)]
enum Namespaces {
    List,
    Show {
        name: String,
    },
    Create {
        name: String,
        /// Anyone may pull its repositories.
        #[arg(long)]
        public: bool,
    },
    /// Makes a namespace public (anonymous pulls) or private.
    Set {
        name: String,
        #[arg(long)]
        public: bool,
    },
    Delete {
        name: String,
    },
    Members {
        name: String,
    },
    /// Gives a member a role in a namespace.
    Grant {
        namespace: String,
        /// `user` (robots too: `robot$NAME`) or `team`.
        kind: String,
        member: String,
        /// `reader`, `developer`, `maintainer` or `admin`.
        role: String,
    },
    /// Takes a member's role in a namespace away.
    Revoke {
        namespace: String,
        /// `user` (robots too: `robot$NAME`) or `team`.
        kind: String,
        member: String,
    },
    /// The namespace's tag immutability rules.
    Immutability {
        namespace: String,
    },
    /// Makes the namespace's tags matching TAGS immutable.
    Protect {
        namespace: String,
        /// A pattern on tags (`*`: any run of characters), e.g. `v*`.
        tags: String,
        /// A pattern on the repository name after the namespace.
        #[arg(long, default_value = "*")]
        repositories: String,
        /// Tags left out (repeatable), e.g. `*-rc*`.
        #[arg(long)]
        except: Vec<String>,
        /// `move` (a tag keeps its manifest) or `delete` (nor can it be deleted).
        #[arg(long, default_value = "move")]
        level: String,
        /// Cover cosign's signature and attestation tags too.
        #[arg(long)]
        signatures: bool,
    },
    /// Removes an immutability rule by its id.
    Unprotect {
        namespace: String,
        id: i64,
    },
}

/// One admin API request: method, path segments under `/api/v1`, query and body.
struct Call {
    method: Method,
    path: Vec<String>,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

fn call(method: Method, path: &[&str]) -> Call {
    Call { method, path: path.iter().map(|s| (*s).to_owned()).collect(), query: Vec::new(), body: None }
}

impl Call {
    fn body(mut self, body: Value) -> Call {
        self.body = Some(body);
        self
    }
}

pub async fn run(admin: Admin) -> anyhow::Result<()> {
    let call = match admin.command {
        AdminCommand::Bootstrap { name, config, password_stdin } => {
            return bootstrap(&name, config, password_stdin).await
        }
        AdminCommand::Users(c) => users(c)?,
        AdminCommand::Robots(c) => robots(c)?,
        AdminCommand::Teams(c) => teams(c),
        AdminCommand::Namespaces(c) => namespaces(c),
        AdminCommand::Me => call(Method::GET, &["me"]),
        AdminCommand::Gc { dry_run, scan_storage } => {
            call(Method::POST, &["gc"]).body(json!({ "dry_run": dry_run, "scan_storage": scan_storage }))
        }
        AdminCommand::Audit { actor, action, target, since, limit } => {
            let mut c = call(Method::GET, &["audit"]);
            let filters = [("actor", actor), ("action", action), ("target", target), ("since", since)];
            c.query = filters.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
            c.query.push(("limit", limit.to_string()));
            c
        }
    };
    let answer = send(&admin.registry, admin.user.as_deref(), call).await?;
    if let Some(answer) = answer {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    }
    Ok(())
}

fn users(c: Users) -> anyhow::Result<Call> {
    Ok(match c {
        Users::List => call(Method::GET, &["users"]),
        Users::Show { name } => call(Method::GET, &["users", &name]),
        Users::Create { name, admin, password_stdin, no_password } => {
            let password = match (no_password, password_stdin) {
                (true, _) => None,
                (false, true) => Some(read_stdin()?),
                (false, false) => Some(made_up_password(&name)),
            };
            call(Method::POST, &["users"]).body(json!({ "name": name, "password": password, "admin": admin }))
        }
        Users::Set { name, admin, password_stdin } => {
            let password = if password_stdin { Some(read_stdin()?) } else { None };
            if password.is_none() && admin.is_none() {
                bail!("nothing to change: give --admin true|false and/or --password-stdin");
            }
            call(Method::PATCH, &["users", &name]).body(json!({ "password": password, "admin": admin }))
        }
        Users::Delete { name } => call(Method::DELETE, &["users", &name]),
    })
}

fn robots(c: Robots) -> anyhow::Result<Call> {
    Ok(match c {
        Robots::Create { name, expires, grants } => {
            let grants = grants
                .iter()
                .map(|g| match g.rsplit_once('=') {
                    Some((namespace, role)) => Ok(json!({ "namespace": namespace, "role": role })),
                    None => bail!("--grant {g:?}: expected NAMESPACE=ROLE"),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            call(Method::POST, &["robots"]).body(json!({
                "name": name, "expires_in": expires.as_secs(), "grants": grants
            }))
        }
        Robots::Delete { name } => {
            let full = if name.starts_with(berth_metadata::ROBOT_PREFIX) {
                name
            } else {
                format!("{}{name}", berth_metadata::ROBOT_PREFIX)
            };
            call(Method::DELETE, &["users", &full])
        }
    })
}

fn teams(c: Teams) -> Call {
    match c {
        Teams::List => call(Method::GET, &["teams"]),
        Teams::Show { name } => call(Method::GET, &["teams", &name]),
        Teams::Create { name } => call(Method::POST, &["teams"]).body(json!({ "name": name })),
        Teams::Delete { name } => call(Method::DELETE, &["teams", &name]),
        Teams::Add { team, user } => call(Method::PUT, &["teams", &team, "members", &user]),
        Teams::Remove { team, user } => call(Method::DELETE, &["teams", &team, "members", &user]),
        Teams::Mirror { team, group } => {
            call(Method::PATCH, &["teams", &team]).body(json!({ "directory_group": group }))
        }
    }
}

fn namespaces(c: Namespaces) -> Call {
    match c {
        Namespaces::List => call(Method::GET, &["namespaces"]),
        Namespaces::Show { name } => call(Method::GET, &["namespaces", &name]),
        Namespaces::Create { name, public } => {
            call(Method::POST, &["namespaces"]).body(json!({ "name": name, "public": public }))
        }
        Namespaces::Set { name, public } => {
            call(Method::PATCH, &["namespaces", &name]).body(json!({ "public": public }))
        }
        Namespaces::Delete { name } => call(Method::DELETE, &["namespaces", &name]),
        Namespaces::Members { name } => call(Method::GET, &["namespaces", &name, "members"]),
        Namespaces::Grant { namespace, kind, member, role } => {
            call(Method::PUT, &["namespaces", &namespace, "members", &kind, &member]).body(json!({ "role": role }))
        }
        Namespaces::Revoke { namespace, kind, member } => {
            call(Method::DELETE, &["namespaces", &namespace, "members", &kind, &member])
        }
        Namespaces::Immutability { namespace } => call(Method::GET, &["namespaces", &namespace, "immutability"]),
        Namespaces::Protect { namespace, tags, repositories, except, level, signatures } => {
            call(Method::POST, &["namespaces", &namespace, "immutability"]).body(json!({
                "repositories": repositories, "tags": tags, "except": except, "level": level, "signatures": signatures
            }))
        }
        Namespaces::Unprotect { namespace, id } => {
            call(Method::DELETE, &["namespaces", &namespace, "immutability", &id.to_string()])
        }
    }
}

/// Sends one request; the answer's JSON, `None` for an empty success (204). A refusal
/// is an error with the API's message.
async fn send(registry: &str, user: Option<&str>, call: Call) -> anyhow::Result<Option<Value>> {
    let mut url = reqwest::Url::parse(registry).with_context(|| format!("--registry {registry:?}"))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--registry {registry:?} cannot be a base URL"))?
        .pop_if_empty()
        .extend(["api", "v1"])
        // Percent-encoded: a namespace's `/` stays inside its segment.
        .extend(&call.path);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let mut request = client.request(call.method.clone(), url.clone()).query(&call.query);
    if let Some(user) = user {
        let password = std::env::var("BERTH_PASSWORD").context("--user needs the password in BERTH_PASSWORD")?;
        request = request.basic_auth(user, Some(password));
    }
    if let Some(body) = &call.body {
        request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string());
    }
    let resp = request.send().await.with_context(|| format!("{} {url}", call.method))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().or(v["errors"][0]["message"].as_str()).map(str::to_owned))
            .unwrap_or(text);
        bail!("{} {}: {status}: {message}", call.method, url.path());
    }
    if text.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} {}: not JSON", call.method, url.path()))?))
}

/// The password a user is created with when none was given: random, printed once on
/// stderr (stdout carries the API's answer).
fn made_up_password(name: &str) -> String {
    let password = random_password();
    eprintln!("password of {name}: {password}");
    password
}

fn random_password() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 18];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin().take(4096).read_to_string(&mut text).context("reading the password from stdin")?;
    let password = text.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("no password on stdin");
    }
    Ok(password)
}

/// Creates the administrator `name` in the database the configuration names, or makes
/// an existing user an administrator with the new password.
async fn bootstrap(name: &str, config: Option<std::path::PathBuf>, password_stdin: bool) -> anyhow::Result<()> {
    if !berth_auth::admin::valid_name(name) {
        bail!("invalid user name {name:?}: letters, digits and . _ - @, starting with a letter or digit");
    }
    let config = crate::config::Config::load(config.as_deref(), std::env::vars())?;
    let meta = MetadataStore::open(&config.database_url())
        .await
        .with_context(|| format!("opening metadata database {}", config.database_url_redacted()))?;
    let password = if password_stdin { read_stdin()? } else { random_password() };
    if password.chars().count() < 8 {
        bail!("a password needs at least 8 characters");
    }
    let hash = tokio::task::spawn_blocking({
        let password = password.clone();
        move || berth_auth::hash_argon2(&password)
    })
    .await?;
    let actor = Actor::system();
    let record = UserRecord { name: name.to_owned(), password_hash: Some(hash.clone()), admin: true, expires_at: None };
    if meta.create_user(&record, &[], &actor).await? {
        eprintln!("created administrator {name}");
    } else {
        meta.set_password(name, &hash, &actor).await?;
        meta.set_admin(name, true, &actor).await?;
        eprintln!("{name} is an administrator, with a new password");
    }
    if !password_stdin {
        println!("{password}");
    }
    Ok(())
}
