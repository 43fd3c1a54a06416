//! `spinforge privacy export USER` and `spinforge privacy erase USER`:
//! an admin's export and erasure of one user's data through the API. The
//! export's checksum is checked before anything is written.

use crate::cli::ApiFlags;
use crate::client::{self, Client};
use crate::commands::print_json;
use crate::identity_commands::call;
use anyhow::{bail, Context};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[derive(Subcommand)]
pub enum PrivacyCommand {
    /// Everything stored about USER (an id or an e-mail address), as JSON
    /// with a SHA-256 checksum over its `data`.
    Export {
        user: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Delete USER's personal data in one transaction and destroy the
    /// keys of its audit fields.
    Erase {
        user: String,
        /// Also delete the sites USER owns.
        #[arg(long, requires = "confirm")]
        with_sites: bool,
        /// Confirms deleting the sites.
        #[arg(long)]
        confirm: bool,
    },
}

pub async fn run(api: &ApiFlags, command: PrivacyCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    match command {
        PrivacyCommand::Export { user, out } => {
            let id = user_id(&mut client, &user).await?;
            let path = format!("/users/{id}/export");
            let response = client.send(|c| c.request(Method::GET, &path)).await?;
            let body = client::check(response).await?.bytes().await?;
            let sum = checked_sum(&body)?;
            match out {
                Some(out) => {
                    std::fs::write(&out, &body)
                        .with_context(|| format!("cannot write {}", out.display()))?;
                    eprintln!(
                        "export of user {id} written to {} (sha256 {sum})",
                        out.display()
                    );
                }
                None => println!("{}", String::from_utf8_lossy(&body)),
            }
            Ok(())
        }
        PrivacyCommand::Erase {
            user,
            with_sites,
            confirm,
        } => {
            let id = user_id(&mut client, &user).await?;
            let body = json!({ "with_sites": with_sites, "confirm": confirm });
            let report = call(
                &mut client,
                Method::POST,
                &format!("/users/{id}/erase"),
                Some(body),
            )
            .await?;
            if api.json {
                return print_json(&report);
            }
            println!(
                "user {id} erased: {} consents, {} sessions, {} API keys, {} audit keys destroyed",
                report["consents"], report["sessions"], report["api_keys"], report["audit_keys"]
            );
            for (label, key) in [
                ("deleted", "sites_deleted"),
                ("kept without owner", "sites_kept"),
            ] {
                let sites: Vec<&str> = report[key]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !sites.is_empty() {
                    println!("sites {label}: {}", sites.join(", "));
                }
            }
            if report["wal_truncated"] != Value::Bool(true) {
                eprintln!("warning: the write-ahead log could not be emptied yet");
            }
            Ok(())
        }
    }
}

/// The checksum the export states, after checking it against its data.
fn checked_sum(body: &[u8]) -> anyhow::Result<String> {
    let export: Value = serde_json::from_slice(body).context("the export is not JSON")?;
    let stated = export["sha256"].as_str().unwrap_or_default().to_owned();
    let data = serde_json::to_vec(&export["data"])?;
    let actual = hex::encode(Sha256::digest(&data));
    if stated != actual {
        bail!("the export's checksum does not match its data (stated {stated}, got {actual})");
    }
    Ok(actual)
}

/// USER as an id: a number as it is, an address looked up in the users.
async fn user_id(client: &mut Client, user: &str) -> anyhow::Result<i64> {
    if let Ok(id) = user.parse::<i64>() {
        return Ok(id);
    }
    let users = call(client, Method::GET, "/users", None).await?;
    users
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| {
            u["email"]
                .as_str()
                .is_some_and(|e| e.eq_ignore_ascii_case(user))
        })
        .and_then(|u| u["id"].as_i64())
        .with_context(|| format!("no user with id or e-mail `{user}`"))
}
