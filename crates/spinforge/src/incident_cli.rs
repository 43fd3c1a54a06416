//! `spinforge incidents list|show|open|contain|lift|resolve`: incident
//! response from the command line, through the API (which checks the
//! `incident:read` / `incident:manage` permissions and audits each act).

use crate::cli::ApiFlags;
use crate::client::Client;
use clap::Subcommand;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum IncidentsCommand {
    /// Incidents, newest first.
    List {
        /// open, contained or resolved.
        #[arg(long)]
        status: Option<String>,
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// One incident with its indicators, actions and timeline.
    Show {
        id: i64,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Open an incident by hand.
    Open {
        title: String,
        /// low, medium, high or critical.
        #[arg(long)]
        severity: String,
        /// KIND=VALUE, e.g. ip=192.0.2.7, user=a@example.com, site=shop.example.com.
        #[arg(long = "indicator")]
        indicators: Vec<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Take a containment action: ban-ip, disable-user, isolate-site or
    /// rotate-secrets. Without --target, against every matching indicator.
    Contain {
        id: i64,
        #[arg(long)]
        action: String,
        #[arg(long)]
        target: Option<String>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Undo one containment action (its id is in `show`).
    Lift {
        id: i64,
        action: i64,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Resolve an incident, with a note of what was found and done.
    Resolve {
        id: i64,
        #[arg(long)]
        note: String,
        #[command(flatten)]
        api: ApiFlags,
    },
}

pub async fn run(command: IncidentsCommand) -> anyhow::Result<()> {
    match command {
        IncidentsCommand::List { status, limit, api } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(s) = status {
                query.push(("status", s));
            }
            let list: Value = Client::new(&api.api)?
                .json(|c| c.request(Method::GET, "/incidents").query(&query))
                .await?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{}", table(list.as_array().map_or(&[][..], Vec::as_slice)));
            }
            Ok(())
        }
        IncidentsCommand::Show { id, api } => {
            let path = format!("/incidents/{id}");
            let incident: Value = Client::new(&api.api)?
                .json(|c| c.request(Method::GET, &path))
                .await?;
            show(&incident, api.json)
        }
        IncidentsCommand::Open {
            title,
            severity,
            indicators,
            api,
        } => {
            let indicators = indicators
                .iter()
                .map(|i| match i.split_once('=') {
                    Some((kind, value)) => Ok(json!({"kind": kind, "value": value})),
                    None => Err(anyhow::anyhow!(
                        "--indicator `{i}`: use KIND=VALUE, e.g. ip=192.0.2.7"
                    )),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let body = json!({"title": title, "severity": severity, "indicators": indicators});
            let incident: Value = Client::new(&api.api)?
                .json(|c| c.request(Method::POST, "/incidents").json(&body))
                .await?;
            show(&incident, api.json)
        }
        IncidentsCommand::Contain {
            id,
            action,
            target,
            api,
        } => {
            let path = format!("/incidents/{id}/contain");
            let body = json!({"action": action, "target": target});
            let incident: Value = Client::new(&api.api)?
                .json(|c| c.request(Method::POST, &path).json(&body))
                .await?;
            show(&incident, api.json)
        }
        IncidentsCommand::Lift { id, action, api } => {
            let path = format!("/incidents/{id}/actions/{action}/lift");
            let incident: Value = Client::new(&api.api)?
                .json(|c| c.request(Method::POST, &path))
                .await?;
            show(&incident, api.json)
        }
        IncidentsCommand::Resolve { id, note, api } => {
            let path = format!("/incidents/{id}/resolve");
            let body = json!({ "note": note });
            let incident: Value = Client::new(&api.api)?
                .json(|c| c.request(Method::POST, &path).json(&body))
                .await?;
            show(&incident, api.json)
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

fn indicators(incident: &Value) -> String {
    incident["indicators"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| format!("{}={}", text(&i["kind"]), text(&i["value"])))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn table(incidents: &[Value]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "ID",
        "SEVERITY",
        "STATUS",
        "OPENED",
        "TITLE",
        "INDICATORS",
    ]);
    for i in incidents {
        table.add_row([
            text(&i["id"]),
            text(&i["severity"]).to_uppercase(),
            text(&i["status"]),
            text(&i["opened_at"]),
            text(&i["title"]),
            indicators(i),
        ]);
    }
    table
}

fn show(incident: &Value, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(incident)?);
        return Ok(());
    }
    println!(
        "Incident #{} [{}] {}\n  status: {}  rule: {}  opened: {}\n  indicators: {}",
        text(&incident["id"]),
        text(&incident["severity"]).to_uppercase(),
        text(&incident["title"]),
        text(&incident["status"]),
        text(&incident["rule"]),
        text(&incident["opened_at"]),
        indicators(incident),
    );
    if let Some(actions) = incident["actions"].as_array().filter(|a| !a.is_empty()) {
        println!("  actions:");
        for a in actions {
            println!(
                "    #{} {} {} ({}, by {})",
                text(&a["id"]),
                text(&a["kind"]),
                text(&a["target"]),
                text(&a["state"]),
                text(&a["actor"]),
            );
        }
    }
    println!("  timeline:");
    for t in incident["timeline"].as_array().into_iter().flatten() {
        println!(
            "    {} {:<9} {:<8} {}",
            text(&t["time"]),
            text(&t["kind"]),
            text(&t["actor"]),
            text(&t["summary"]),
        );
    }
    Ok(())
}
