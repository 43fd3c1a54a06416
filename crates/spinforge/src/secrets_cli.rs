//! Secrets and backups on the command line (issue 8): `secrets
//! set|list|rm` are clients of the API; `keys rotate-master|master-keys|
//! retire-master`, `backup` and `restore` work on a data directory on the
//! host, also while `serve` runs on it.
//!
//! A secret value is read from standard input only (a prompt without echo
//! on a terminal), never from the command line, and never printed.

use crate::cli::{ApiFlags, KeysCommand};
use crate::client::{self, Client};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Set KEY for DOMAIN; the value is read from standard input.
    Set { domain: String, key: String },
    /// Names, versions, who set them and when; never values.
    List { domain: String },
    /// Remove KEY (every version) from DOMAIN.
    Rm { domain: String, key: String },
}

/// Where a host command finds the data directory and the `[secrets]`
/// section of the config.
#[derive(Args, Clone)]
pub struct HostArgs {
    #[arg(long, env = "SPINFORGE_DATA_DIR", default_value = "./spinforge-data")]
    pub data_dir: PathBuf,
    /// The config file `serve` uses (for `[secrets]`).
    #[arg(long, env = "SPINFORGE_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// The backup file to write; must not exist.
    #[arg(long)]
    pub out: PathBuf,
    /// Read the passphrase from the first line of standard input.
    #[arg(long)]
    pub passphrase_stdin: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A file written by `spinforge backup`.
    pub file: PathBuf,
    /// The new data directory; must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Read the passphrase from the first line of standard input.
    #[arg(long)]
    pub passphrase_stdin: bool,
    /// The config the restored server will use (for `[secrets]`: a master
    /// key kept outside the backup, or a transit key service).
    #[arg(long, env = "SPINFORGE_CONFIG")]
    pub config: Option<PathBuf>,
}

pub async fn secrets(api: &ApiFlags, command: SecretsCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    match command {
        SecretsCommand::Set { domain, key } => {
            let value = read_value()?;
            let path = format!(
                "/sites/{}/secrets/{}",
                crate::commands::seg(&domain),
                crate::commands::seg(&key)
            );
            let body = Zeroizing::new(json!({ "value": value.expose_secret() }).to_string());
            let meta: Value = client
                .json(|c| {
                    c.request(Method::PUT, &path)
                        .header("content-type", "application/json")
                        .body(body.as_str().to_owned())
                })
                .await?;
            if api.json {
                return crate::commands::print_json(&meta);
            }
            println!(
                "set {key} for {domain} (version {}); it applies at the app's next start \
                 (`spinforge restart {domain}`)",
                meta["version"]
            );
        }
        SecretsCommand::List { domain } => {
            let path = format!("/sites/{}/secrets", crate::commands::seg(&domain));
            let body: Value = client.json(|c| c.request(Method::GET, &path)).await?;
            if api.json {
                return crate::commands::print_json(&body);
            }
            let list = body["secrets"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("{domain} has no secrets");
                return Ok(());
            }
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY);
            table.set_header(["NAME", "VERSION", "SET BY", "SET AT", "MASTER KEY", "STATE"]);
            for s in &list {
                table.add_row([
                    s["name"].as_str().unwrap_or("-").to_owned(),
                    s["version"].to_string(),
                    s["created_by"]
                        .as_i64()
                        .map_or("-".into(), |u| format!("user {u}")),
                    rfc3339(s["created_at"].as_i64().unwrap_or(0)),
                    s["master_key"].as_str().unwrap_or("-").to_owned(),
                    match s["rotation_incident"].as_i64() {
                        Some(id) => format!("rotation required (incident {id})"),
                        None => "in use".into(),
                    },
                ]);
            }
            println!("{table}");
        }
        SecretsCommand::Rm { domain, key } => {
            let path = format!(
                "/sites/{}/secrets/{}",
                crate::commands::seg(&domain),
                crate::commands::seg(&key)
            );
            let response = client.send(|c| c.request(Method::DELETE, &path)).await?;
            client::check(response).await?;
            if api.json {
                return crate::commands::print_json(&json!({ "removed": key }));
            }
            println!("removed {key} from {domain}");
        }
    }
    Ok(())
}

/// `keys rotate-master`, `keys master-keys`, `keys retire-master`.
pub async fn master_keys(api: &ApiFlags, command: KeysCommand) -> anyhow::Result<()> {
    let host = match &command {
        KeysCommand::RotateMaster(host) | KeysCommand::MasterKeys(host) => host,
        KeysCommand::RetireMaster { host, .. } => host,
        KeysCommand::RotateSigning => bail!("not a master key command"),
    };
    let secrets = open_secrets(host).await?;
    let done = match command {
        KeysCommand::RotateMaster(_) => {
            let rotated = secrets.rotate_master().await?;
            let (id, moved) = (rotated.active, rotated.secrets);
            let usage = secrets.master_key_usage().await?;
            let unused: Vec<String> = usage
                .iter()
                .filter(|(k, n)| *k != id && *n == 0)
                .map(|(k, _)| k.clone())
                .collect();
            let keys = rotated.keys;
            let out = json!({
                "active": id,
                "rewrapped": moved,
                "rewrapped_keys": keys,
                "unused": unused,
            });
            if !api.json {
                println!(
                    "master key {id} is active; {moved} data keys of secrets and {keys} of \
                     sealed keys (certificates, ACME account, signing keys) re-wrapped"
                );
                for old in &unused {
                    println!(
                        "{old} is no longer used; retire it with \
                         `spinforge keys retire-master {old}` once backed up"
                    );
                }
            }
            out
        }
        KeysCommand::MasterKeys(_) => {
            let active = secrets.active_master_key()?;
            let usage = secrets.master_key_usage().await?;
            if !api.json {
                println!("source: {}", secrets.master_key_origin());
                for (id, n) in &usage {
                    let mark = if *id == active { " (active)" } else { "" };
                    println!("{id}{mark}: wraps {n} data keys");
                }
            }
            json!({
                "active": active,
                "keys": usage.iter().map(|(id, n)| json!({"id": id, "data_keys": n}))
                    .collect::<Vec<_>>(),
            })
        }
        KeysCommand::RetireMaster { id, .. } => {
            secrets.retire_master(&id).await?;
            if !api.json {
                println!("master key {id} removed from the keyring");
            }
            json!({ "retired": id })
        }
        KeysCommand::RotateSigning => unreachable!("checked above"),
    };
    secrets.close().await;
    if api.json {
        crate::commands::print_json(&done)?;
    }
    Ok(())
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let data_dir = existing_data_dir(&args.host.data_dir)?;
    let config = crate::config::secrets_config(args.host.config.as_deref())?;
    let passphrase = read_passphrase(args.passphrase_stdin, true)?;
    // Migrations first, so the snapshot has today's schema.
    store::SqliteStore::open(&data_dir)
        .await
        .context("cannot open the store")?
        .close()
        .await;
    let started = std::time::Instant::now();
    let summary = secrets::backup::create(&data_dir, &config, &args.out, &passphrase).await?;
    if args.json {
        let mut v = serde_json::to_value(&summary)?;
        v["secs"] = json!(started.elapsed().as_secs_f64());
        return crate::commands::print_json(&v);
    }
    println!(
        "backup written to {} ({} bytes, {} files, {:.1}s)",
        summary.file.display(),
        summary.bytes,
        summary.files,
        started.elapsed().as_secs_f64()
    );
    println!("sha256 {}", summary.sha256);
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let passphrase = read_passphrase(args.passphrase_stdin, false)?;
    let config = crate::config::secrets_config(args.config.as_deref())?;
    let checked =
        secrets::backup::restore(&args.file, &args.data_dir, &config, &passphrase).await?;
    println!(
        "restored into {}; {checked} secrets decrypt. Start it with \
         `spinforge serve --data-dir {}`",
        args.data_dir.display(),
        args.data_dir.display()
    );
    Ok(())
}

async fn open_secrets(host: &HostArgs) -> anyhow::Result<secrets::Secrets> {
    let data_dir = existing_data_dir(&host.data_dir)?;
    let config = crate::config::secrets_config(host.config.as_deref())?;
    store::SqliteStore::open(&data_dir)
        .await
        .context("cannot open the store")?
        .close()
        .await;
    Ok(secrets::Secrets::open(&data_dir, &config).await?)
}

fn existing_data_dir(path: &Path) -> anyhow::Result<PathBuf> {
    if !path.join(store::DB_FILE).is_file() {
        bail!("{} holds no SpinForge store", path.display());
    }
    Ok(std::fs::canonicalize(path)?)
}

/// The secret value: all of standard input (one trailing newline
/// dropped), or a prompt without echo on a terminal.
fn read_value() -> anyhow::Result<SecretString> {
    let value = if std::io::stdin().is_terminal() {
        Zeroizing::new(rpassword::prompt_password("Value: ").context("cannot prompt")?)
    } else {
        let mut text = Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the value from standard input")?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        text
    };
    if value.is_empty() {
        bail!("no value on standard input");
    }
    Ok(SecretString::from(value.as_str().to_owned()))
}

fn read_passphrase(from_stdin: bool, confirm: bool) -> anyhow::Result<SecretString> {
    if from_stdin {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the passphrase from standard input")?;
        let phrase = line.trim_end_matches(['\r', '\n']);
        if phrase.is_empty() {
            bail!("no passphrase on standard input");
        }
        return Ok(SecretString::from(phrase.to_owned()));
    }
    let phrase = Zeroizing::new(
        rpassword::prompt_password("Backup passphrase: ")
            .context("cannot prompt for a passphrase (use --passphrase-stdin)")?,
    );
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Passphrase again: ")?);
        if *again != *phrase {
            bail!("the passphrases do not match");
        }
    }
    Ok(SecretString::from(phrase.as_str().to_owned()))
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
