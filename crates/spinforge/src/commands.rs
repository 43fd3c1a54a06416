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
            sso,
            paste_code,
            password_stdin,
            api,
        } => match (sso, email) {
            (Some(provider), _) => sso_login(&api, &provider, paste_code).await,
            (None, Some(email)) => login(&api, &email, password_stdin).await,
            (None, None) => anyhow::bail!("login needs --email or --sso"),
        },
        Command::Logout { api } => logout(&api).await,
        Command::Deploy {
            dir,
            domain,
            kind,
            upstream,
            strategy,
            health_path,
            spa,
            api,
        } => {
            let settings = json!({
                "spa": spa,
                "upstream": (kind == SiteType::Proxy).then(|| upstream.first().cloned()).flatten(),
                "upstreams": (kind == SiteType::Balancer && !upstream.is_empty()).then_some(&upstream),
                "strategy": strategy,
                "health_path": health_path,
            });
            if kind == SiteType::Proxy && upstream.len() > 1 {
                bail!("a proxy site has one --upstream; use --type balancer for several");
            }
            if kind != SiteType::Proxy && kind != SiteType::Balancer && !upstream.is_empty() {
                bail!("--upstream is only for proxy and balancer sites");
            }
            deploy(&api, dir.as_deref(), &domain, kind, settings).await
        }
        Command::Sites { command, api } => sites(&api, command).await,
        Command::Releases { domain, api } => releases(&api, &domain).await,
        Command::Rollback {
            domain,
            release,
            api,
        } => rollback(&api, &domain, release).await,
        Command::Status { domain, api } => status(&api, domain.as_deref()).await,
        Command::Logs {
            domain,
            follow,
            since,
            lines,
            api,
        } => logs(&api, &domain, follow, since, lines).await,
        Command::Restart { domain, api } => restart(&api, &domain).await,
        Command::Whoami { api } => crate::identity_commands::whoami(&api).await,
        Command::Users { command, api } => crate::identity_commands::users(&api, command).await,
        Command::Apikeys { command, api } => {
            crate::identity_commands::api_keys(&api, command).await
        }
        Command::Sessions { command, api } => {
            crate::identity_commands::sessions(&api, command).await
        }
        Command::Keys { command, api } => crate::identity_commands::keys(&api, command).await,
        Command::Privacy { command, api } => crate::privacy_cli::run(&api, command).await,
        Command::Serve(_)
        | Command::Admin(_)
        | Command::Bans { .. }
        | Command::Certs { .. }
        | Command::Emergency { .. }
        | Command::Waf(_)
        | Command::Audit(_)
        | Command::Sandbox(_)
        | Command::Doctor(_)
        | Command::Install(_)
        | Command::Firewall(_)
        | Command::Scan(_)
        | Command::Vulndb(_)
        | Command::Incidents(_)
        | Command::Secrets { .. }
        | Command::Backup(_)
        | Command::Restore(_) => {
            unreachable!("handled in cli::run")
        }
    }
}

/// Percent-encodes a domain (or an IPv6 group, with its `/`) for use as
/// one path segment.
pub(crate) fn seg(domain: &str) -> String {
    domain.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        out
    })
}

pub(crate) fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn text(value: &Value, key: &str) -> String {
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

// ---- single sign-on login (oidc api) ----

/// `login --sso PROVIDER [--paste-code]`: a login bound to this process
/// (RFC 8252 with PKCE). It keeps a random verifier and sends only its
/// challenge; the browser brings back a one-time code (to a listener on
/// 127.0.0.1, or for pasting), and code plus verifier buy the tokens. A
/// link forwarded to someone else is worthless to whoever forwarded it.
async fn sso_login(api: &ApiFlags, provider: &str, paste_code: bool) -> anyhow::Result<()> {
    use identity::oidc::cli::pkce_challenge;

    let client = Client::new(&api.api)?;
    let verifier = identity::Identity::new_secret_token();
    let challenge = pkce_challenge(&verifier);
    let listener = if paste_code {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .await
                .context("cannot listen on 127.0.0.1 for the browser's answer")?,
        )
    };
    let mut query = vec![("format", "json".to_owned()), ("code_challenge", challenge)];
    if let Some(listener) = &listener {
        let port = listener.local_addr()?.port();
        query.push(("redirect_uri", format!("http://127.0.0.1:{port}/callback")));
    }
    let start = client
        .raw()
        .get(client.url(&format!("/auth/oidc/{}/start", seg(provider))))
        .query(&query)
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {}", client.base))?;
    let start: Value = client::check(start).await?.json().await?;
    let (Some(link), Some(ttl)) = (
        start["authorize_url"].as_str(),
        start["expires_in"].as_u64(),
    ) else {
        anyhow::bail!("the API answered the SSO start without a link");
    };
    eprintln!("open this link in a browser to log in with {provider}:");
    println!("{link}");
    let ttl = std::time::Duration::from_secs(ttl);
    let code = match listener {
        Some(listener) => sso_wait_for_browser(listener, ttl).await?,
        None => {
            eprintln!("then paste the code the browser shows here:");
            let line = tokio::time::timeout(
                ttl,
                tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| line)
                }),
            )
            .await
            .context("no code was pasted in time")???;
            line.trim().to_owned()
        }
    };
    let pair: TokenPair = client::check(
        client
            .raw()
            .post(client.url("/auth/oidc/token"))
            .json(&json!({ "code": code, "code_verifier": verifier }))
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {}", client.base))?,
    )
    .await?
    .json()
    .await?;
    let me: Value = client
        .raw()
        .get(client.url("/whoami"))
        .bearer_auth(&pair.access_token)
        .send()
        .await
        .with_context(|| format!("cannot reach the API at {}", client.base))?
        .json()
        .await?;
    let email = me["user"]["email"].as_str().unwrap_or("").to_owned();
    client::save_login(&StoredLogin {
        api: client.base.clone(),
        email: email.clone(),
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

/// Serves `GET /callback` on the loopback listener until the browser
/// brings a code (or the hub's error), at most `ttl`. Other paths get 404
/// and are ignored.
async fn sso_wait_for_browser(
    listener: tokio::net::TcpListener,
    ttl: std::time::Duration,
) -> anyhow::Result<String> {
    use axum::extract::Query;
    use std::collections::HashMap;
    use tokio::sync::mpsc;

    let (tx, mut rx) = mpsc::channel::<HashMap<String, String>>(1);
    let app = axum::Router::new().route(
        "/callback",
        axum::routing::get(move |Query(q): Query<HashMap<String, String>>| {
            let tx = tx.clone();
            async move {
                let failed = q.contains_key("error");
                let _ = tx.try_send(q);
                axum::response::Html(if failed {
                    "<p>The login failed; see the command line.</p>"
                } else {
                    "<p>Logged in; you can close this window and return to the command line.</p>"
                })
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let answer = tokio::time::timeout(ttl, rx.recv()).await;
    // Let the page reach the browser before the listener goes.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    server.abort();
    let mut q = answer
        .context("the login was not finished in the browser in time")?
        .context("the browser listener stopped")?;
    if let Some(error) = q.remove("error") {
        // The hub sends a code only (no message: it would sit in a URL).
        anyhow::bail!("single sign-on refused ({error}): {}", sso_refusal(&error));
    }
    q.remove("code")
        .filter(|c| !c.is_empty())
        .context("the browser came back without a code")
}

/// What a single sign-on error code from the hub's redirect means.
fn sso_refusal(code: &str) -> &'static str {
    match code {
        "unknown_email" => {
            "no account has the email the provider returned; an admin must create the user first"
        }
        "user_disabled" => "this account is disabled",
        _ => "see the hub's audit log (auth.failed) for the reason",
    }
}

// ---- end single sign-on login ----

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
    settings: Value,
) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let path = format!("/sites/{}", seg(domain));
    // Only the settings given on the command line are sent.
    let given: serde_json::Map<String, Value> = settings
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();

    // Create the site on first deploy; a later deploy changes only what
    // the command line names.
    let existing = client.send(|c| c.request(Method::GET, &path)).await?;
    let site: Value = if existing.status() == StatusCode::NOT_FOUND {
        let mut body = given.clone();
        body.insert("domain".into(), json!(domain));
        body.insert("type".into(), json!(kind.as_str()));
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
        let mut change = given.clone();
        // `--spa` absent means "leave it", not "turn it off".
        if change.get("spa") == Some(&json!(false)) {
            change.remove("spa");
        }
        if change.is_empty() {
            site
        } else {
            client
                .json::<Value>(|c| c.request(Method::PATCH, &path).json(&change))
                .await?
        }
    };

    if matches!(kind, SiteType::Proxy | SiteType::Balancer) {
        if dir.is_some() {
            bail!("a {} site takes no folder", kind.as_str());
        }
        let target = match kind {
            SiteType::Proxy => text(&site, "upstream"),
            _ => site["balancer"]["upstreams"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        };
        return finish(api, &site, &format!("{domain} now proxies to {target}"));
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

pub(crate) fn finish(api: &ApiFlags, value: &Value, message: &str) -> anyhow::Result<()> {
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
    let domains: Vec<String> = match domain {
        Some(domain) => vec![domain.to_owned()],
        None => {
            let sites: Vec<Value> = client.json(|c| c.request(Method::GET, "/sites")).await?;
            sites.iter().map(|s| text(s, "domain")).collect()
        }
    };
    let mut statuses = Vec::new();
    for domain in &domains {
        let path = format!("/sites/{}/status", seg(domain));
        statuses.push(
            client
                .json::<Value>(|c| c.request(Method::GET, &path))
                .await?,
        );
    }
    if api.json {
        return print_json(&json!({ "api": client.base, "ready": ready, "sites": statuses }));
    }
    println!(
        "API {}: {}",
        client.base,
        if ready { "ready" } else { "NOT READY" }
    );
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header([
        "DOMAIN", "TYPE", "RELEASE", "STATE", "PID", "PORT", "UPTIME", "REQUESTS", "ERRORS",
        "RESTARTS", "MEMORY",
    ]);
    for status in &statuses {
        let site = &status["site"];
        let app = &status["spinlet"];
        let memory = app["memory_bytes"]
            .as_u64()
            .map_or("-".into(), |b| format!("{} MiB", b >> 20));
        let uptime = app["uptime_secs"]
            .as_u64()
            .map_or("-".into(), |s| format!("{s}s"));
        table.add_row([
            text(site, "domain"),
            text(site, "type"),
            text(site, "active_release"),
            if app.is_null() {
                "-".into()
            } else {
                text(app, "state")
            },
            text(app, "pid"),
            text(app, "port"),
            uptime,
            text(app, "requests"),
            text(app, "errors"),
            text(app, "restarts"),
            memory,
        ]);
    }
    println!("{table}");
    for status in &statuses {
        if let Some(reason) = status["spinlet"]["failed_reason"].as_str() {
            println!("{} failed: {reason}", text(&status["site"], "domain"));
        }
    }
    if domain.is_some() {
        for status in &statuses {
            print_sandbox(&text(&status["site"], "domain"), &status["spinlet"]);
        }
    }
    if !ready {
        bail!("the platform is not ready");
    }
    Ok(())
}

/// The sandbox lines of `status DOMAIN`: how the app is isolated, and
/// the limits in force beside the current use.
fn print_sandbox(domain: &str, app: &Value) {
    if let Some(isolation) = app["isolation"].as_str() {
        println!("{domain} isolation: {isolation}");
    }
    let sandbox = &app["sandbox"];
    if sandbox.is_null() {
        return;
    }
    let limits = &sandbox["limits"];
    let mib = |v: &Value| {
        v.as_u64()
            .map_or("-".into(), |b| format!("{} MiB", b >> 20))
    };
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(["LIMIT", "IN FORCE", "IN USE"]);
    table.add_row([
        "memory".into(),
        mib(&limits["memory_bytes"]),
        mib(&sandbox["memory_bytes"]),
    ]);
    table.add_row([
        "processes".into(),
        text(limits, "max_processes"),
        text(sandbox, "processes"),
    ]);
    table.add_row([
        "cpu".into(),
        format!("{}%", text(limits, "cpu_percent")),
        "-".into(),
    ]);
    table.add_row(["open files".into(), text(limits, "open_files"), "-".into()]);
    table.add_row(["/tmp".into(), mib(&limits["tmp_bytes"]), "-".into()]);
    table.add_row(["OOM kills".into(), "-".into(), text(sandbox, "oom_kills")]);
    println!("{table}");
    if let Some(missing) = sandbox["missing_layers"]
        .as_array()
        .filter(|m| !m.is_empty())
    {
        let names: Vec<&str> = missing.iter().filter_map(Value::as_str).collect();
        println!("{domain} runs without: {}", names.join(", "));
    }
}

async fn logs(
    api: &ApiFlags,
    domain: &str,
    follow: bool,
    since: Option<String>,
    lines: usize,
) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let path = format!("/sites/{}/logs", seg(domain));
    let mut query: Vec<(&str, String)> = vec![("lines", lines.to_string())];
    if let Some(since) = since {
        query.push(("since", since));
    }
    let mut last: Option<String> = None;
    // Bounded even with --follow: a day of one-second polls.
    for _ in 0..86_400 {
        let view: Value = client
            .json(|c| c.request(Method::GET, &path).query(&query))
            .await?;
        let fresh: Vec<String> = view["lines"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        // Lines at the timestamp of the last one printed may come again.
        let start = last
            .as_ref()
            .and_then(|l| fresh.iter().position(|f| f == l))
            .map_or(0, |i| i + 1);
        for line in &fresh[start.min(fresh.len())..] {
            if api.json {
                println!("{}", serde_json::to_string(line)?);
            } else {
                println!("{line}");
            }
        }
        if let Some(line) = fresh.last() {
            last = Some(line.clone());
            // Ask from the last line's own timestamp onwards next time.
            if let Some(stamp) = line.split_whitespace().next() {
                query.retain(|(k, _)| *k != "since");
                query.push(("since", stamp.to_owned()));
            }
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    Ok(())
}

async fn restart(api: &ApiFlags, domain: &str) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let path = format!("/sites/{}/restart", seg(domain));
    let response = client.send(|c| c.request(Method::POST, &path)).await?;
    client::check(response).await?;
    finish(
        api,
        &json!({ "restarted": domain }),
        &format!("{domain} will start fresh on its next request"),
    )
}
