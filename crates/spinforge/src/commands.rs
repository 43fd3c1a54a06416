//! The client commands: each one is a few API calls and a table (or, with
//! `--json`, the API's JSON as it came).

use crate::cli::{ApiFlags, Command, SiteType, SitesCommand};
use crate::client::{self, Client, StoredLogin, TokenPair};
use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Login {
            email,
            password_stdin,
            api,
        } => login(&api, &email, password_stdin).await,
        Command::Logout { api } => logout(&api).await,
        Command::Deploy {
            dir,
            domain,
            kind,
            upstream,
            spa,
            api,
        } => deploy(&api, dir.as_deref(), &domain, kind, upstream, spa).await,
        Command::Sites { command, api } => sites(&api, command).await,
        Command::Releases { domain, api } => releases(&api, &domain).await,
        Command::Rollback {
            domain,
            release,
            api,
        } => rollback(&api, &domain, release).await,
        Command::Status { domain, api } => status(&api, domain.as_deref()).await,
        Command::Serve(_) | Command::Admin(_) => unreachable!("handled in cli::run"),
    }
}

/// Percent-encodes a domain for use as one path segment.
fn seg(domain: &str) -> String {
    domain.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        out
    })
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn text(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn login(api: &ApiFlags, email: &str, password_stdin: bool) -> anyhow::Result<()> {
    let password = crate::admin::read_password(password_stdin, false)?;
    let client = Client::new(&api.api)?;
    let response = client
        .raw()
        .post(client.url("/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {}", client.base))?;
    let pair: TokenPair = client::check(response).await?.json().await?;
    client::save_login(&StoredLogin {
        api: client.base.clone(),
        email: email.to_owned(),
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
    })?;
    if api.json {
        print_json(&json!({ "logged_in": email, "api": client.base }))
    } else {
        println!("logged in to {} as {email}", client.base);
        Ok(())
    }
}

async fn logout(api: &ApiFlags) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let response = client
        .send(|c| c.request(Method::POST, "/auth/logout"))
        .await;
    client::forget_login()?;
    if let Ok(response) = response {
        if response.status() != StatusCode::UNAUTHORIZED {
            client::check(response).await?;
        }
    }
    println!("logged out");
    Ok(())
}

async fn deploy(
    api: &ApiFlags,
    dir: Option<&Path>,
    domain: &str,
    kind: SiteType,
    upstream: Option<String>,
    spa: bool,
) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let path = format!("/sites/{}", seg(domain));

    // Create the site on first deploy; a later deploy keeps its settings.
    let existing = client.send(|c| c.request(Method::GET, &path)).await?;
    let site: Value = if existing.status() == StatusCode::NOT_FOUND {
        let body =
            json!({ "domain": domain, "type": kind.as_str(), "upstream": upstream, "spa": spa });
        client
            .json(|c| c.request(Method::POST, "/sites").json(&body))
            .await?
    } else {
        let site: Value = client::check(existing).await?.json().await?;
        if site["type"] != kind.as_str() {
            bail!(
                "{domain} is a {} site; it cannot take a {} deploy",
                text(&site, "type"),
                kind.as_str()
            );
        }
        if kind == SiteType::Proxy && upstream.is_some() {
            let body = json!({ "upstream": upstream });
            client
                .json::<Value>(|c| c.request(Method::PATCH, &path).json(&body))
                .await?
        } else {
            site
        }
    };

    if !matches!(kind, SiteType::Static) {
        if dir.is_some() {
            bail!("a {} site takes no folder", kind.as_str());
        }
        return finish(
            api,
            &site,
            &format!("{domain} now proxies to {}", text(&site, "upstream")),
        );
    }
    let Some(dir) = dir else {
        bail!("give the folder to deploy: spinforge deploy DIR --domain {domain}")
    };

    let bundle = tempfile::NamedTempFile::new()?;
    let files = crate::pack::pack(dir, bundle.as_file())?;
    let size = bundle.as_file().metadata()?.len();
    let progress = ProgressBar::new(size);
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")?
            .progress_chars("=> "),
    );
    progress.set_message(format!("uploading {files} files"));
    let file = tokio::fs::File::open(bundle.path()).await?;
    let bar = progress.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            bar.inc(chunk.len() as u64);
        }
    });
    let releases_path = format!("{path}/releases");
    let response = client
        .request(Method::POST, &releases_path)
        .header("content-type", "application/gzip")
        .header("content-length", size)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .with_context(|| format!("upload to {} failed", client.base))?;
    progress.finish_and_clear();
    let release: Value = client::check(response).await?.json().await?;
    finish(
        api,
        &release,
        &format!(
            "deployed {domain}: release {} ({files} files, {} bytes)",
            text(&release, "id"),
            text(&release, "size_bytes")
        ),
    )
}

fn finish(api: &ApiFlags, value: &Value, message: &str) -> anyhow::Result<()> {
    if api.json {
        print_json(value)
    } else {
        println!("{message}");
        Ok(())
    }
}

fn site_table(sites: &[Value]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(["DOMAIN", "TYPE", "ACTIVE RELEASE", "UPSTREAM", "CREATED"]);
    for site in sites {
        table.add_row([
            text(site, "domain"),
            text(site, "type"),
            text(site, "active_release"),
            text(site, "upstream"),
            text(site, "created_at"),
        ]);
    }
    table
}

async fn sites(api: &ApiFlags, command: SitesCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    match command {
        SitesCommand::List => {
            let sites: Vec<Value> = client.json(|c| c.request(Method::GET, "/sites")).await?;
            if api.json {
                return print_json(&Value::Array(sites));
            }
            if sites.is_empty() {
                println!("no sites yet: spinforge deploy DIR --domain NAME");
            } else {
                println!("{}", site_table(&sites));
            }
        }
        SitesCommand::Show { domain } => {
            let path = format!("/sites/{}", seg(&domain));
            let site: Value = client.json(|c| c.request(Method::GET, &path)).await?;
            if api.json {
                return print_json(&site);
            }
            println!("{}", site_table(std::slice::from_ref(&site)));
        }
        SitesCommand::Delete { domain } => {
            let path = format!("/sites/{}", seg(&domain));
            let response = client.send(|c| c.request(Method::DELETE, &path)).await?;
            client::check(response).await?;
            return finish(
                api,
                &json!({ "deleted": domain }),
                &format!("deleted {domain}"),
            );
        }
    }
    Ok(())
}

async fn releases(api: &ApiFlags, domain: &str) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let path = format!("/sites/{}/releases", seg(domain));
    let releases: Vec<Value> = client.json(|c| c.request(Method::GET, &path)).await?;
    if api.json {
        return print_json(&Value::Array(releases));
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(["", "RELEASE", "FILES", "BYTES", "SHA-256", "CREATED"]);
    for r in &releases {
        let sha = text(r, "sha256");
        table.add_row([
            if r["active"] == true {
                "*".into()
            } else {
                String::new()
            },
            text(r, "id"),
            text(r, "file_count"),
            text(r, "size_bytes"),
            sha.chars().take(12).collect(),
            text(r, "created_at"),
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn rollback(api: &ApiFlags, domain: &str, release: Option<String>) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let path = format!("/sites/{}/rollback", seg(domain));
    let body = json!({ "release": release });
    let site: Value = client
        .json(|c| c.request(Method::POST, &path).json(&body))
        .await?;
    finish(
        api,
        &site,
        &format!(
            "{domain} now serves release {}",
            text(&site, "active_release")
        ),
    )
}

async fn status(api: &ApiFlags, domain: Option<&str>) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let ready = client
        .raw()
        .get(format!("{}/readyz", client.base))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    let sites: Vec<Value> = match domain {
        Some(domain) => {
            let path = format!("/sites/{}", seg(domain));
            vec![client.json(|c| c.request(Method::GET, &path)).await?]
        }
        None => client.json(|c| c.request(Method::GET, "/sites")).await?,
    };
    if api.json {
        return print_json(&json!({ "api": client.base, "ready": ready, "sites": sites }));
    }
    println!(
        "API {}: {}",
        client.base,
        if ready { "ready" } else { "NOT READY" }
    );
    println!("{}", site_table(&sites));
    if !ready {
        bail!("the platform is not ready");
    }
    Ok(())
}
