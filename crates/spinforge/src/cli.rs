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
        #[arg(long, required_unless_present = "sso", conflicts_with = "sso")]
        email: Option<String>,
        /// Log in with single sign-on at this configured provider: prints a
        /// link to open in a browser on this machine; the browser then
        /// hands the login back to a listener of this command on 127.0.0.1.
        #[arg(long, value_name = "PROVIDER")]
        sso: Option<String>,
        /// With --sso, for a machine whose browser cannot reach this one's
        /// loopback (over ssh): the browser shows a one-time code to paste
        /// here instead.
        #[arg(long, requires = "sso")]
        paste_code: bool,
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
    /// Show who you are logged in as, and what you may do.
    Whoami {
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Manage users (admins).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Create, list and revoke API keys for CI and automation.
    Apikeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// List your login sessions, or end one.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Manage the platform's keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    // ---- TLS ----
    /// Upload or list TLS certificates; set a site's HTTPS mode.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    // ---- shield ----
    /// List, add or lift bans of client addresses at the edge.
    Bans {
        #[command(subcommand)]
        command: BansCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Switch emergency mode: every rate limit tightened, WAF paranoia up.
    Emergency {
        #[command(subcommand)]
        command: EmergencyCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    // --- WAF (issue #7) ---
    /// Try the web-application firewall locally, for tuning exclusions.
    #[command(subcommand)]
    Waf(WafCommand),
    /// Read the audit log, or verify a data directory's audit chain.
    #[command(subcommand)]
    Audit(crate::audit_cli::AuditCommand),
    // ---- host hardening and supply chain (issue #11) ----
    /// Check this host and SpinForge's setup; exits 1 if a check fails.
    Doctor(crate::harden_cli::DoctorArgs),
    /// Install SpinForge as a hardened systemd service.
    Install(crate::harden_cli::InstallArgs),
    /// nftables rules for a SpinForge host.
    #[command(subcommand)]
    Firewall(crate::harden_cli::FirewallCommand),
    /// Match a bundle's (or a site's) lockfiles against the advisory
    /// database; exits 1 on findings at --fail-on or worse.
    Scan(crate::harden_cli::ScanArgs),
    /// Manage the local advisory (OSV) database.
    #[command(subcommand)]
    Vulndb(crate::harden_cli::VulndbCommand),
    // --- privacy (issue #9) ---
    /// Export or erase everything stored about a user (admins).
    Privacy {
        #[command(subcommand)]
        command: crate::privacy_cli::PrivacyCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    // --- incidents (issue #9) ---
    /// Incident response: list, show, open, contain, lift, resolve.
    #[command(subcommand)]
    Incidents(crate::incident_cli::IncidentsCommand),
    // ---- secrets and backups (issue 8) ----
    /// Set, list or remove a site's secrets (given to its app as
    /// environment variables at its next start).
    Secrets {
        #[command(subcommand)]
        command: crate::secrets_cli::SecretsCommand,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Write a consistent backup of a data directory (also while `serve`
    /// runs), with the master key sealed by a passphrase.
    Backup(crate::secrets_cli::BackupArgs),
    /// Restore a backup into a new, empty data directory.
    Restore(crate::secrets_cli::RestoreArgs),
}

#[derive(Subcommand)]
pub enum UsersCommand {
    List,
    Show {
        id: i64,
    },
    /// Create a user; the password is read from a prompt or stdin.
    Create {
        #[arg(long)]
        email: String,
        /// admin, developer or viewer.
        #[arg(long)]
        role: String,
        /// The customer (tenant) the user belongs to; created on first use.
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's role, customer, name or state.
    Update {
        id: i64,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
    },
    Delete {
        id: i64,
    },
    /// End every session of a user.
    RevokeSessions {
        id: i64,
    },
    /// Lift a login lock (after too many failed logins) at once.
    Unlock {
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum ApiKeysCommand {
    /// Create a key; it is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// A permission such as sites:read; repeat for more.
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        /// Limit the key to a site; repeat for more.
        #[arg(long = "site")]
        sites: Vec<String>,
        #[arg(long, default_value_t = 90)]
        expires_in_days: u64,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    List,
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Add a new token signing key; older keys verify until their tokens
    /// expire.
    RotateSigning,
    // ---- secrets (issue 8): on the host, no API needed ----
    /// Re-wrap every secret's data key under a new master key, in one
    /// transaction; a running serve keeps working.
    RotateMaster(crate::secrets_cli::HostArgs),
    /// List the master keys and how many data keys each wraps.
    MasterKeys(crate::secrets_cli::HostArgs),
    /// Remove an old master key that no data key uses any more.
    RetireMaster {
        id: String,
        #[command(flatten)]
        host: crate::secrets_cli::HostArgs,
    },
}

#[derive(Subcommand)]
pub enum BansCommand {
    List,
    /// Ban an address (or an IPv6 group like 2001:db8::/64).
    Add {
        ip: String,
        /// How long, in seconds [default: the configured ban TTL].
        #[arg(long)]
        ttl_secs: Option<u64>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Rm {
        ip: String,
    },
}

#[derive(Subcommand, Clone, Copy)]
pub enum EmergencyCommand {
    On,
    Off,
    Status,
}

// --- WAF (issue #7) ---
#[derive(Subcommand)]
pub enum WafCommand {
    /// Show which WAF rules match a request or a string, and why. Exits 1
    /// if the request would be blocked.
    ///
    /// INPUT is a raw HTTP request ("POST /login HTTP/1.1", headers, a
    /// blank line, the body) or any other string, which is tested as the
    /// query argument `q`. `-` reads it from standard input.
    Test {
        input: String,
        /// Paranoia level, 1 (fewest false positives) to 4.
        #[arg(long, default_value_t = 1)]
        paranoia: u8,
        /// Anomaly score that blocks.
        #[arg(long, default_value_t = 5)]
        threshold: u32,
        /// Exclude a rule: RULE, RULE@/path-prefix, RULE:arg or RULE@/path:arg
        /// (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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

// ---- TLS ----

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Store a certificate for a site: the chain must match the key,
    /// cover the domain and be valid now.
    Upload {
        domain: String,
        /// PEM file: the certificate, then its intermediates.
        #[arg(long)]
        cert: PathBuf,
        /// PEM file: the private key.
        #[arg(long)]
        key: PathBuf,
    },
    /// List certificates: domain, issuer, expiry, source.
    List,
    /// How a site answers plain HTTP once it has a certificate, and its
    /// opt-in HSTS extras.
    Https {
        domain: String,
        #[arg(long, value_parser = ["redirect", "both", "https-only"], default_value = "redirect")]
        mode: String,
        #[arg(long)]
        hsts_include_subdomains: bool,
        #[arg(long)]
        hsts_preload: bool,
    },
    /// A proxy site's own TLS towards its https:// upstream: a CA to
    /// trust and a client certificate (mutual TLS). Without options it
    /// shows the setting; the client key is never shown.
    UpstreamTls {
        domain: String,
        /// PEM file: one or more CA certificates for the upstream.
        #[arg(long, conflicts_with = "clear")]
        ca: Option<PathBuf>,
        /// PEM file: the client certificate chain.
        #[arg(long, requires = "client_key", conflicts_with = "clear")]
        client_cert: Option<PathBuf>,
        /// PEM file: the client certificate's private key.
        #[arg(long, requires = "client_cert", conflicts_with = "clear")]
        client_key: Option<PathBuf>,
        /// Remove the site's setting (back to the serve configuration).
        #[arg(long)]
        clear: bool,
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
    /// The edge's HTTPS address [default: 0.0.0.0:8443].
    #[arg(long, env = "SPINFORGE_TLS_LISTEN")]
    pub tls_listen: Option<String>,
    /// Development: a local CA (kept in the data directory) issues a
    /// `*.localhost` certificate; the log says how to trust the CA.
    #[arg(long)]
    pub dev_tls: bool,
    /// The API's address [default: 127.0.0.1:9080].
    #[arg(long, env = "SPINFORGE_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Also deploy each folder of ./examples as NAME.localhost.
    #[arg(long)]
    pub demo: bool,
    /// Log format.
    #[arg(long, env = "SPINFORGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    // ---- privacy (issue #9) ----
    /// Personal data in the log (text or JSON): `full`, or `masked` (client IPs cut
    /// to /24 and /48, e-mail addresses to `a***@example.com`, user
    /// agents left out).
    #[arg(long, env = "SPINFORGE_LOG_PII", value_enum, default_value_t = LogPii::Full)]
    pub log_pii: LogPii,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogPii {
    Full,
    Masked,
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
        Command::Bans { command, api } => crate::shield_cmd::bans(&api, command).await,
        Command::Certs { command, api } => crate::certs_cmd::run(&api, command).await,
        Command::Emergency { command, api } => crate::shield_cmd::emergency(&api, command).await,
        // --- WAF (issue #7) ---
        Command::Waf(command) => match crate::waf_cli::run(command)? {
            Ok(()) => Ok(()),
            Err(crate::waf_cli::WouldBlock) => std::process::exit(1),
        },
        Command::Audit(command) => crate::audit_cli::run(command).await,
        Command::Incidents(command) => crate::incident_cli::run(command).await,
        Command::Secrets { command, api } => crate::secrets_cli::secrets(&api, command).await,
        Command::Backup(args) => crate::secrets_cli::backup(args).await,
        Command::Restore(args) => crate::secrets_cli::restore(args).await,
        Command::Sandbox(command) => crate::sandbox::run(command),
        // ---- host hardening and supply chain (issue #11) ----
        Command::Doctor(args) => match crate::harden_cli::doctor(args).await? {
            false => Ok(()),
            true => std::process::exit(1),
        },
        Command::Install(args) => crate::harden_cli::install(args),
        Command::Firewall(command) => crate::harden_cli::firewall(command),
        Command::Scan(args) => match crate::harden_cli::scan(args).await? {
            false => Ok(()),
            true => std::process::exit(1),
        },
        Command::Vulndb(command) => crate::harden_cli::vulndb(command),
        other => crate::commands::run(other).await,
    }
}
