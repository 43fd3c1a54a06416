//! Command-line shape. Exit codes: 0 ok, 1 refused or failed, 2 usage
//! error (clap's own).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "spinforge",
    version,
    about = "A self-hosted application platform, secure by default, in one binary",
    long_about = "A self-hosted application platform, secure by default, in one binary.\n\n\
        Run `spinforge serve` on the server. Every other command except `admin` talks to \
        its API (default http://127.0.0.1:9080).",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by every command that talks to the API.
#[derive(Args, Clone)]
pub struct ApiFlags {
    /// The hub's API address.
    #[arg(
        long,
        global = true,
        env = "SPINFORGE_API",
        default_value = "http://127.0.0.1:9080"
    )]
    pub api: String,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the platform: edge, API and store in one process.
    Serve(ServeArgs),
    /// Work on a data directory directly, on the host (no API needed).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The spinlet sandbox on this host (no API needed).
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Log in and store the session in your config directory (mode 0600).
    Login {
        #[arg(long)]
        email: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// End the stored session.
    Logout {
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Deploy a folder as a new release of a site (created if needed).
    Deploy {
        /// The folder to upload (static sites).
        dir: Option<PathBuf>,
        #[arg(long)]
        domain: String,
        #[arg(long = "type", value_enum, default_value_t = SiteType::Static)]
        kind: SiteType,
        /// Upstream URL of a proxy site, e.g. http://10.0.0.5:8000; repeat it
        /// for each upstream of a balancer site.
        #[arg(long)]
        upstream: Vec<String>,
        /// How a balancer picks an upstream: round_robin or least_conn.
        #[arg(long)]
        strategy: Option<String>,
        /// Path a balancer probes on each upstream, e.g. /health.
        #[arg(long)]
        health_path: Option<String>,
        /// Serve index.html for unknown extension-less paths (single-page apps).
        #[arg(long)]
        spa: bool,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// List, show or delete sites.
    Sites {
        #[command(subcommand)]
        command: SitesCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// List a site's releases, newest first.
    Releases {
        domain: String,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Activate an earlier release (default: the one before the active one).
    Rollback {
        domain: String,
        release: Option<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Show an app's captured stdout and stderr.
    Logs {
        domain: String,
        /// Keep printing new lines as they arrive (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
        /// Only lines from this long ago: 30s, 10m, 2h, 1d.
        #[arg(long)]
        since: Option<String>,
        /// At most this many lines.
        #[arg(short = 'n', long, default_value_t = 200)]
        lines: usize,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Stop an app so it starts fresh on the next request; clears a
    /// failed state.
    Restart {
        domain: String,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Show whether the platform is ready, and a site's state.
    Status {
        domain: Option<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SiteType {
    Static,
    Proxy,
    Process,
    Balancer,
}

impl SiteType {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteType::Static => "static",
            SiteType::Proxy => "proxy",
            SiteType::Process => "process",
            SiteType::Balancer => "balancer",
        }
    }
}

#[derive(Subcommand)]
pub enum SitesCommand {
    List,
    Show { domain: String },
    Delete { domain: String },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create an admin user (the first one, or another).
    Create {
        #[arg(long, env = "SPINFORGE_DATA_DIR", default_value = "./spinforge-data")]
        data_dir: PathBuf,
        #[arg(long)]
        email: String,
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Check the store's integrity (works on a stopped data directory).
    Check {
        #[arg(long, env = "SPINFORGE_DATA_DIR", default_value = "./spinforge-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Show each isolation layer and whether this host supports it.
    Check {
        /// Print machine-readable JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// A TOML config file. Flags beat SPINFORGE_* variables beat the file.
    #[arg(long, env = "SPINFORGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where state lives [default: ./spinforge-data].
    #[arg(long, env = "SPINFORGE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The edge's HTTP address [default: 0.0.0.0:8080].
    #[arg(long, env = "SPINFORGE_LISTEN")]
    pub listen: Option<String>,
    /// The edge's HTTPS address [default: 0.0.0.0:8443] (not served yet).
    #[arg(long, env = "SPINFORGE_TLS_LISTEN")]
    pub tls_listen: Option<String>,
    /// The API's address [default: 127.0.0.1:9080].
    #[arg(long, env = "SPINFORGE_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Also deploy each folder of ./examples as NAME.localhost.
    #[arg(long)]
    pub demo: bool,
    /// Log format.
    #[arg(long, env = "SPINFORGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => crate::serve::run(args).await,
        Command::Admin(command) => crate::admin::run(command).await,
        Command::Sandbox(command) => crate::sandbox::run(command),
        other => crate::commands::run(other).await,
    }
}
