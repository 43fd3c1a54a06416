//! `spinforge doctor`, `install --systemd`, `firewall render`, `scan` and
//! `vulndb import` (issue #11): flag parsing and printing only; the
//! checks, plans, rules and matching live in the `harden` crate.

use crate::cli::{LogFormat, ServeArgs};
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use harden::doctor::{Context, ServeFacts};
use harden::vulndb::Severity;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DoctorArgs {
    /// Check the tree under DIR instead of this host (/etc, /proc/sys,
    /// the data directory ... are all read below it).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The data directory [default: the config's, else ./spinforge-data].
    #[arg(long, env = "SPINFORGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// serve's config file [default: /etc/spinforge/spinforge.toml if it
    /// exists].
    #[arg(long, env = "SPINFORGE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
pub struct InstallArgs {
    /// Install as a systemd service (the only kind there is).
    #[arg(long, required = true)]
    systemd: bool,
    /// Print every step and file instead of doing it.
    #[arg(long)]
    dry_run: bool,
    /// Install into the tree under DIR instead of this host.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    #[arg(long, default_value = "/var/lib/spinforge")]
    data_dir: PathBuf,
    /// Where the binary is installed, for ExecStart.
    #[arg(long, default_value = "/usr/bin/spinforge")]
    binary: PathBuf,
    #[arg(long, default_value = "/etc/spinforge/spinforge.toml")]
    config: PathBuf,
    /// The service user to create.
    #[arg(long, default_value = "spinforge")]
    user: String,
    /// Run serve as the service user with no capability but binding
    /// ports 80/443; apps then run without the sandbox.
    #[arg(long)]
    unprivileged: bool,
}

#[derive(Subcommand)]
pub enum FirewallCommand {
    /// Print an nftables ruleset for this host (load it with nft -f).
    Render(RenderArgs),
}

#[derive(Args)]
pub struct RenderArgs {
    /// A network SSH is allowed from (repeat for more); without it SSH
    /// is open to all, rate limited.
    #[arg(long)]
    ssh_from: Vec<String>,
    #[arg(long, default_value_t = 22)]
    ssh_port: u16,
    /// Another web port to open besides 80, 443 and the configured
    /// listeners (repeatable).
    #[arg(long)]
    port: Vec<u16>,
    /// serve's config file, for its listener ports.
    #[arg(long, env = "SPINFORGE_CONFIG")]
    config: Option<PathBuf>,
    /// Add the banned4/banned6 sets that shield.nftables fills.
    #[arg(long)]
    ban_sets: bool,
    /// New connections per second per source address.
    #[arg(long, default_value_t = 50)]
    new_per_second: u32,
    /// Open connections per source address.
    #[arg(long, default_value_t = 200)]
    max_concurrent: u32,
    /// New TCP connections per second host-wide.
    #[arg(long, default_value_t = 500)]
    syn_per_second: u32,
}

#[derive(Args)]
pub struct ScanArgs {
    /// A bundle folder, or the domain of a site (its active release).
    target: String,
    #[arg(long, env = "SPINFORGE_DATA_DIR", default_value = "./spinforge-data")]
    data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit 1 when a finding is at least this severe: low, medium, high,
    /// critical.
    #[arg(long, default_value = "high")]
    fail_on: String,
}

#[derive(Subcommand)]
pub enum VulndbCommand {
    /// Load OSV records from a folder (searched recursively) or a zip
    /// such as OSV's per-ecosystem all.zip.
    Import {
        source: PathBuf,
        #[arg(long, env = "SPINFORGE_DATA_DIR", default_value = "./spinforge-data")]
        data_dir: PathBuf,
    },
}

/// `low|medium|high|critical`, for flags and the config.
pub fn severity(text: &str, name: &str) -> anyhow::Result<Severity> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "low" => Severity::Low,
        "medium" | "moderate" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => bail!("{name}: `{text}` is not low, medium, high or critical"),
    })
}

fn serve_args(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> ServeArgs {
    ServeArgs {
        config,
        data_dir,
        listen: None,
        tls_listen: None,
        api_listen: None,
        demo: false,
        log_format: LogFormat::Text,
        log_pii: crate::cli::LogPii::Full,
        dev_tls: false,
    }
}

/// Exit code 1 when any check failed.
pub async fn doctor(args: DoctorArgs) -> anyhow::Result<bool> {
    let root = args.root;
    if !root.is_dir() {
        bail!("--root: {} is not a folder", root.display());
    }
    // The config is a host path, read through --root like the rest.
    let installed = Path::new("/etc/spinforge/spinforge.toml");
    let config = match args.config {
        Some(c) => Some(harden::under(&root, c)),
        None => Some(harden::under(&root, installed)).filter(|p| p.exists()),
    };
    let resolved = crate::config::resolve(&serve_args(config, None));
    let data_dir = args
        .data_dir
        .or_else(|| resolved.as_ref().ok().map(|s| s.data_dir.clone()));
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("./spinforge-data"));
    let serve = resolved
        .map(|s| ServeFacts {
            listen: s.listen,
            tls_listen: s.tls_listen,
            api_listen: s.api_listen,
            // The API socket is plain HTTP; TLS comes from the edge.
            api_tls: false,
            sandbox_enabled: s.sandbox.enabled,
            allow_degraded: s.sandbox.allow_degraded,
            audit_key_dir: s.audit.key_dir,
        })
        .map_err(|e| format!("{e:#}"));
    let ctx = Context {
        root,
        data_dir,
        serve,
        now: time::OffsetDateTime::now_utc(),
    };
    let report = harden::doctor::run(&ctx).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(report.failed())
}

pub fn install(args: InstallArgs) -> anyhow::Result<()> {
    debug_assert!(args.systemd);
    let spec = harden::install::InstallSpec {
        root: args.root,
        binary: args.binary,
        data_dir: args.data_dir,
        config: args.config,
        user: args.user,
        unprivileged: args.unprivileged,
    };
    let steps = harden::install::plan(&spec)?;
    if args.dry_run {
        print!("{}", harden::install::describe(&spec, &steps));
        return Ok(());
    }
    for line in harden::install::apply(&spec, &steps)? {
        println!("{line}");
    }
    println!("next: systemctl daemon-reload && systemctl enable --now spinforge");
    Ok(())
}

pub fn firewall(command: FirewallCommand) -> anyhow::Result<()> {
    let FirewallCommand::Render(args) = command;
    let mut web_ports = vec![80, 443];
    web_ports.extend(&args.port);
    if let Some(config) = &args.config {
        let settings = crate::config::resolve(&serve_args(Some(config.clone()), None))?;
        web_ports.push(settings.listen.port());
        web_ports.push(settings.tls_listen.port());
    }
    let spec = harden::firewall::FirewallSpec {
        ssh_from: args.ssh_from,
        ssh_port: args.ssh_port,
        web_ports,
        new_per_second: args.new_per_second,
        max_concurrent: args.max_concurrent,
        syn_per_second: args.syn_per_second,
        ban_sets: args.ban_sets,
    };
    print!("{}", harden::firewall::render(&spec)?);
    Ok(())
}

/// Exit code 1 when a finding reaches `--fail-on`.
pub async fn scan(args: ScanArgs) -> anyhow::Result<bool> {
    let threshold = severity(&args.fail_on, "--fail-on")?;
    let target = PathBuf::from(&args.target);
    let dir = if target.is_dir() {
        target
    } else {
        harden::scan::active_release_dir(&args.data_dir, &args.target).await?
    };
    let db = harden::vulndb::VulnDb::load(&args.data_dir)?;
    if db.is_empty() {
        // An empty database finds nothing; saying "0 vulnerable" would be
        // a false pass.
        bail!(
            "no advisories in {}; run `spinforge vulndb import DIR_OR_ZIP` first",
            args.data_dir.join(harden::vulndb::DB_FILE).display()
        );
    }
    let report = harden::scan::scan_dir(&dir, &db)
        .with_context(|| format!("cannot scan {}", dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", harden::scan::table(&report));
    }
    Ok(!report.at_least(threshold).is_empty())
}

pub fn vulndb(command: VulndbCommand) -> anyhow::Result<()> {
    let VulndbCommand::Import { source, data_dir } = command;
    let report = harden::vulndb::import(&source, &data_dir)?;
    println!(
        "imported {} of {} records ({} skipped: withdrawn or other ecosystems); {} advisories in {}",
        report.imported,
        report.read,
        report.skipped,
        report.total,
        report.database.display()
    );
    Ok(())
}
