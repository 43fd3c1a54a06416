//! `spinforge certs ...`: upload a site's certificate, list certificates,
//! and set a site's HTTPS mode. Clients of the hub's certificate routes;
//! with `--json` they print the API's JSON as it came.

use crate::cli::{ApiFlags, CertsCommand};
use crate::client::Client;
use anyhow::Context;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use reqwest::Method;
use serde_json::{json, Value};

/// Largest file read for a PEM chain or key; the API refuses more anyway.
const MAX_PEM_FILE: u64 = 64 * 1024;

fn read_pem(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("--{what}: cannot read {}", path.display()))?
        .len();
    if size > MAX_PEM_FILE {
        anyhow::bail!(
            "--{what}: {} is larger than {MAX_PEM_FILE} bytes",
            path.display()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("--{what}: {} is not a text PEM file", path.display()))
}

pub async fn run(api: &ApiFlags, command: CertsCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    match command {
        CertsCommand::Upload { domain, cert, key } => {
            let body = json!({ "cert": read_pem(&cert, "cert")?, "key": read_pem(&key, "key")? });
            let path = format!("/certs/{}", crate::commands::seg(&domain));
            let info: Value = client
                .json(|c| c.request(Method::POST, &path).json(&body))
                .await?;
            crate::commands::finish(
                api,
                &info,
                &format!(
                    "certificate for {domain} stored (issuer {}, valid until {})",
                    info["issuer"].as_str().unwrap_or("-"),
                    info["not_after"].as_str().unwrap_or("-")
                ),
            )?;
        }
        CertsCommand::List => {
            let certs: Value = client.json(|c| c.request(Method::GET, "/certs")).await?;
            if api.json {
                return crate::commands::print_json(&certs);
            }
            let list = certs.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no certificates");
                return Ok(());
            }
            let mut table = Table::new();
            table.load_preset(UTF8_BORDERS_ONLY);
            table.set_header(["DOMAIN", "ISSUER", "EXPIRES", "SOURCE"]);
            for c in &list {
                table.add_row(
                    ["domain", "issuer", "not_after", "source"]
                        .map(|k| c[k].as_str().unwrap_or("-").to_owned()),
                );
            }
            println!("{table}");
        }
        CertsCommand::Https {
            domain,
            mode,
            hsts_include_subdomains,
            hsts_preload,
        } => {
            let body = json!({
                "mode": mode.replace('-', "_"),
                "hsts_include_subdomains": hsts_include_subdomains,
                "hsts_preload": hsts_preload,
            });
            let path = format!("/sites/{}/https", crate::commands::seg(&domain));
            let view: Value = client
                .json(|c| c.request(Method::PUT, &path).json(&body))
                .await?;
            crate::commands::finish(api, &view, &format!("{domain}: HTTPS mode {mode}"))?;
        }
        CertsCommand::UpstreamTls {
            domain,
            ca,
            client_cert,
            client_key,
            clear,
        } => {
            let path = format!("/sites/{}/upstream-tls", crate::commands::seg(&domain));
            let read = |file: &Option<std::path::PathBuf>, what| {
                file.as_deref().map(|f| read_pem(f, what)).transpose()
            };
            let body = json!({
                "upstream_ca": read(&ca, "ca")?,
                "upstream_client_cert": read(&client_cert, "client-cert")?,
                "upstream_client_key": read(&client_key, "client-key")?,
            });
            let method = if clear {
                Method::DELETE
            } else if body
                .as_object()
                .is_some_and(|o| o.values().any(|v| !v.is_null()))
            {
                Method::PUT
            } else {
                Method::GET
            };
            let view: Value = client
                .json(|c| {
                    let request = c.request(method.clone(), &path);
                    if method == Method::PUT {
                        request.json(&body)
                    } else {
                        request
                    }
                })
                .await?;
            let client_cert = match view["client_cert"]["subject"].as_str() {
                Some(subject) => format!(
                    "client certificate {subject} (issuer {}, valid until {})",
                    view["client_cert"]["issuer"].as_str().unwrap_or("-"),
                    view["client_cert"]["not_after"].as_str().unwrap_or("-")
                ),
                None => "no client certificate".to_owned(),
            };
            let ca = if view["ca_set"].as_bool() == Some(true) {
                "own CA"
            } else {
                "no own CA"
            };
            crate::commands::finish(
                api,
                &view,
                &format!("{domain}: upstream TLS: {ca}, {client_cert}"),
            )?;
        }
    }
    Ok(())
}
