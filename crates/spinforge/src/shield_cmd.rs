//! `spinforge bans ...` and `spinforge emergency ...`: clients of the
//! shield's API routes. With `--json` they print the API's JSON as it came.

use crate::cli::{ApiFlags, BansCommand, EmergencyCommand};
use crate::client::{self, Client};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use reqwest::Method;
use serde_json::{json, Value};

pub async fn bans(api: &ApiFlags, command: BansCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    match command {
        BansCommand::List => {
            let body: Value = client.json(|c| c.request(Method::GET, "/bans")).await?;
            if api.json {
                return print(&body);
            }
            let bans = body["bans"].as_array().cloned().unwrap_or_default();
            if bans.is_empty() {
                println!("no bans");
                return Ok(());
            }
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY);
            table.set_header(["IP", "REASON", "EXPIRES IN"]);
            let now = unix_now();
            for ban in &bans {
                let expires = ban["expires_at"].as_u64().unwrap_or(0);
                table.add_row([
                    ban["ip"].as_str().unwrap_or("-").to_owned(),
                    ban["reason"].as_str().unwrap_or("-").to_owned(),
                    format!("{}s", expires.saturating_sub(now)),
                ]);
            }
            println!("{table}");
        }
        BansCommand::Add {
            ip,
            ttl_secs,
            reason,
        } => {
            let body = json!({ "ip": ip, "ttl_secs": ttl_secs, "reason": reason });
            let ban: Value = client
                .json(|c| c.request(Method::POST, "/bans").json(&body))
                .await?;
            if api.json {
                return print(&ban);
            }
            println!(
                "banned {} until unix time {}",
                ban["ip"].as_str().unwrap_or(&ip),
                ban["expires_at"]
            );
        }
        BansCommand::Rm { ip } => {
            let path = format!("/bans/{}", crate::commands::seg(&ip));
            let response = client.send(|c| c.request(Method::DELETE, &path)).await?;
            client::check(response).await?;
            if api.json {
                return print(&json!({ "lifted": ip }));
            }
            println!("lifted the ban of {ip}");
        }
    }
    Ok(())
}

pub async fn emergency(api: &ApiFlags, command: EmergencyCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let state: Value = match command {
        EmergencyCommand::Status => {
            client
                .json(|c| c.request(Method::GET, "/shield/emergency"))
                .await?
        }
        EmergencyCommand::On | EmergencyCommand::Off => {
            let on = matches!(command, EmergencyCommand::On);
            client
                .json(|c| {
                    c.request(Method::PUT, "/shield/emergency")
                        .json(&json!({ "on": on }))
                })
                .await?
        }
    };
    if api.json {
        return print(&state);
    }
    if state["on"].as_bool() == Some(true) {
        println!(
            "emergency mode is ON: rate limits x{}, WAF paranoia raised",
            state["factor"]
        );
    } else {
        println!("emergency mode is off");
    }
    Ok(())
}

fn print(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
