//! `spinforge audit list|tail|verify`. `list` and `tail` read the log
//! through the API; `verify` opens a data directory on the host (running
//! or stopped) read-only and checks the whole chain.

use crate::cli::ApiFlags;
use crate::client::Client;
use anyhow::bail;
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use reqwest::Method;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Events, newest first. With --json, one JSON object per line (an
    /// export in JSON Lines).
    List {
        #[command(flatten)]
        filter: AuditFilter,
        /// At most this many events.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u64,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Print events as they are stored (Ctrl-C to stop).
    Tail {
        #[command(flatten)]
        filter: AuditFilter,
        /// Stop after this many new events.
        #[arg(long)]
        max: Option<u64>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Check the audit chain and its signed checkpoints (works on a
    /// stopped data directory).
    Verify {
        #[arg(long, env = "SPINFORGE_DATA_DIR", default_value = "./spinforge-data")]
        data_dir: PathBuf,
        /// Where the audit keys are [default: DATA/audit].
        #[arg(long)]
        key_dir: Option<PathBuf>,
    },
}

/// Filters shared by `list` and `tail`.
#[derive(Args)]
pub struct AuditFilter {
    /// An event type (auth.failed) or a prefix (auth. or auth).
    #[arg(long = "type")]
    kind: Option<String>,
    /// The acting user's id.
    #[arg(long)]
    user: Option<i64>,
    /// success, failure or denied.
    #[arg(long)]
    result: Option<String>,
    /// e.g. site:shop.example.com
    #[arg(long)]
    resource: Option<String>,
    /// RFC 3339, or an age: 30s, 15m, 24h, 7d.
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
}

impl AuditFilter {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |key, value: Option<String>| {
            if let Some(v) = value {
                out.push((key, v));
            }
        };
        put("type", self.kind.clone());
        put("user", self.user.map(|u| u.to_string()));
        put("result", self.result.clone());
        put("resource", self.resource.clone());
        put("since", self.since.clone());
        put("until", self.until.clone());
        out
    }
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List { filter, limit, api } => list(&api, &filter, limit).await,
        AuditCommand::Tail { filter, max, api } => tail(&api, &filter, max).await,
        AuditCommand::Verify { data_dir, key_dir } => verify(data_dir, key_dir).await,
    }
}

async fn page(client: &mut Client, query: &[(&'static str, String)]) -> anyhow::Result<Value> {
    client
        .json(|c| c.request(Method::GET, "/audit").query(query))
        .await
}

async fn list(api: &ApiFlags, filter: &AuditFilter, limit: u64) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    while (events.len() as u64) < limit {
        let mut query = filter.pairs();
        let want = (limit - events.len() as u64).min(1000);
        query.push(("limit", want.to_string()));
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let body = page(&mut client, &query).await?;
        let batch = body["events"].as_array().cloned().unwrap_or_default();
        events.extend(batch);
        cursor = body["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    if api.json {
        for event in &events {
            println!("{}", serde_json::to_string(event)?);
        }
    } else {
        println!("{}", table(&events));
    }
    Ok(())
}

async fn tail(api: &ApiFlags, filter: &AuditFilter, max: Option<u64>) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    // Start at the newest event there is, matching or not.
    let newest = page(&mut client, &[("limit", "1".into())]).await?;
    let mut after = newest["events"][0]["seq"].as_i64().unwrap_or(0);
    let mut shown = 0u64;
    loop {
        let mut query = filter.pairs();
        query.push(("after", after.to_string()));
        query.push(("limit", "1000".into()));
        let body = page(&mut client, &query).await?;
        let events = body["events"].as_array().cloned().unwrap_or_default();
        for event in &events {
            if api.json {
                println!("{}", serde_json::to_string(event)?);
            } else {
                println!("{}", line(event));
            }
            shown += 1;
            if max.is_some_and(|m| shown >= m) {
                return Ok(());
            }
        }
        // Filtered pages may be empty while the log moved on: follow the
        // cursor when there is one, else poll.
        match body["next_cursor"].as_str().and_then(|c| c.parse().ok()) {
            Some(next) => after = next,
            None => {
                if let Some(last) = events.last().and_then(|e| e["seq"].as_i64()) {
                    after = last;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn line(event: &Value) -> String {
    format!(
        "{} {} {} user={} ip={} {} {}",
        text(&event["seq"]),
        text(&event["time"]),
        text(&event["type"]),
        text(&event["actor"]["user_id"]),
        text(&event["client_ip"]),
        text(&event["resource"]),
        text(&event["result"]),
    )
}

fn table(events: &[Value]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "SEQ",
        "TIME",
        "TYPE",
        "USER",
        "CLIENT IP",
        "RESOURCE",
        "RESULT",
    ]);
    for e in events {
        table.add_row([
            text(&e["seq"]),
            text(&e["time"]),
            text(&e["type"]),
            text(&e["actor"]["user_id"]),
            text(&e["client_ip"]),
            text(&e["resource"]),
            text(&e["result"]),
        ]);
    }
    table
}

async fn verify(data_dir: PathBuf, key_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let report = audit::verify(&data_dir, key_dir.as_deref()).await?;
    match report.fault {
        None => {
            println!(
                "ok: {} rows, {} checkpoints, head {} ({:.2}s)",
                report.rows,
                report.checkpoints,
                report.head,
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Some(fault) => bail!("the audit log fails verification at {fault}"),
    }
}
