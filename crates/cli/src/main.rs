//! `berth`: a container image registry.

use berth::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "berth", version, about = "A container image registry: OCI Distribution v1.1, drop-in for registry:2")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry server.
    ///
    /// Configuration comes from CONFIG (registry:2's config.yml format) and from
    /// REGISTRY_* environment variables, which override the file
    /// (REGISTRY_HTTP_ADDR = http.addr). Without any, Berth listens on 127.0.0.1:5000
    /// with data under ./data.
    Serve {
        /// Path of a YAML configuration file.
        config: Option<PathBuf>,
        /// Listen beyond loopback without authentication (otherwise refused).
        #[arg(long)]
        allow_unauthenticated: bool,
    },
    /// Sign in to a registry through its OpenID Connect provider (a browser opens) and
    /// print a registry password on stdout, for `docker login --password-stdin`.
    Login {
        /// The registry's base URL (https://registry.example.com).
        registry: String,
        /// Only print the sign-in URL; do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
    },
    /// Manage users, robots, teams, namespaces and roles, and read the audit log, through
    /// the admin API; `bootstrap` creates an administrator on the host.
    Admin(berth::admin::Admin),
    /// Run one garbage-collection pass on the configured stores and print what it freed
    /// (or, with --dry-run, what it would free). Safe beside running instances on
    /// PostgreSQL; on SQLite stop the server first, or use `berth admin gc`.
    Gc {
        /// Path of a YAML configuration file.
        config: Option<PathBuf>,
        #[arg(long)]
        dry_run: bool,
        /// Also list the store for objects without a record (a crash leftover).
        #[arg(long)]
        scan_storage: bool,
    },
    /// registry:2's `garbage-collect`, for its habits: one pass, as `berth gc
    /// --scan-storage`. Berth collects online; the registry need not be read-only.
    GarbageCollect {
        config: PathBuf,
        #[arg(short = 'd', long)]
        dry_run: bool,
        /// Also delete every untagged manifest now (index children and referrers of
        /// kept manifests stay).
        #[arg(short = 'm', long)]
        delete_untagged: bool,
    },
    /// Check a configuration and print the effective settings, then exit.
    CheckConfig {
        /// Path of a YAML configuration file.
        config: Option<PathBuf>,
    },
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Config::load(path.map(PathBuf::as_path), std::env::vars())
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.log_level().unwrap_or("info")));
    config.log_level()?;
    if config.log.accesslog.disabled {
        filter = filter.add_directive("berth::access=off".parse()?);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.json_logs()? {
        // The request span's fields (its request id) go on every line logged inside it.
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
    berth_http::log_panics();
    Ok(())
}

fn gc(config: Config, dry_run: bool, scan_storage: bool, delete_untagged: bool) -> anyhow::Result<()> {
    init_logging(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(berth::gc_once(&config, dry_run, scan_storage, delete_untagged))?;
    let verb = if dry_run { "would free" } else { "freed" };
    for blob in &report.blobs {
        println!("{}\t{}", blob.digest, blob.size);
    }
    if report.blob_count as usize > report.blobs.len() {
        println!("... and {} more", report.blob_count as usize - report.blobs.len());
    }
    println!(
        "{verb} {} blobs ({} bytes); {} unreferenced links and {} untagged manifests{}",
        report.blob_count,
        report.bytes,
        report.links,
        report.manifests,
        if dry_run { " would be removed" } else { " removed" }
    );
    if report.failed > 0 {
        anyhow::bail!("{} deletions failed; the next pass retries them", report.failed);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { config, allow_unauthenticated } => {
            let config = load(config.as_ref())?;
            init_logging(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                // Blocking work is one short disk operation at a time (a read, a batch, a
                // sync); more threads than this only add memory.
                .max_blocking_threads(128)
                .build()?
                .block_on(berth::serve(config, allow_unauthenticated))
        }
        Command::Login { registry, no_browser } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let credential = runtime.block_on(berth::login::login(&registry, !no_browser))?;
            eprintln!(
                "Signed in as {}; the registry password below is good for {} days. Use it with:\n    \
                 docker login {} -u {} --password-stdin",
                credential.username,
                credential.expires_in / 86_400,
                registry.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/'),
                credential.username,
            );
            println!("{}", credential.password);
            Ok(())
        }
        Command::Admin(admin) => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(berth::admin::run(admin))
        }
        Command::Gc { config, dry_run, scan_storage } => gc(load(config.as_ref())?, dry_run, scan_storage, false),
        Command::GarbageCollect { config, dry_run, delete_untagged } => {
            gc(load(Some(&config))?, dry_run, true, delete_untagged)
        }
        Command::CheckConfig { config } => {
            let config = load(config.as_ref())?;
            config.log_level()?;
            config.json_logs()?;
            println!("listen: {}", config.addr()?);
            let (s, root) = (&config.storage, config.root());
            let storage = match (&s.s3, &s.azure, &s.gcs) {
                (Some(s3), ..) => format!(
                    "s3 bucket {} ({}) under {}",
                    s3.bucket,
                    s3.regionendpoint.as_deref().unwrap_or(&s3.region),
                    s3.rootdirectory.as_deref().unwrap_or("/")
                ),
                (_, Some(azure), _) => format!("azure container {} of account {}", azure.container, azure.accountname),
                (.., Some(gcs)) => {
                    format!("gcs bucket {} under {}", gcs.bucket, gcs.rootdirectory.as_deref().unwrap_or("/"))
                }
                _ => format!("filesystem at {}", root.display()),
            };
            println!("storage: {storage}");
            println!("metadata: {}", config.database_url_redacted());
            println!("delete enabled: {}", config.storage.delete.enabled);
            Ok(())
        }
    }
}
