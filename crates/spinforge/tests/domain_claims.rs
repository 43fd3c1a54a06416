//! Domain claims through the real binary: a developer cannot take a
//! wildcard, a public suffix, bare `localhost`, or any name that equals,
//! sits under, sits above or covers another customer's site; each such
//! refusal is an audit event and leaves the edge serving the owner. An
//! admin still creates wildcards, and ordinary names still work.

mod common;

use common::*;
use flate2::{write::GzEncoder, Compression};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PASSWORD: &str = "a long enough password 42";

async fn call(
    server: &Server,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http()
        .request(method, format!("{}{path}", server.api_url()))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    status_and_json(request.send().await.expect("api call")).await
}

/// A developer of `customer`, logged in: its access token.
async fn developer(server: &Server, admin: &str, customer: &str) -> String {
    let email = format!("dev@{customer}.test");
    let body =
        json!({ "email": email, "password": PASSWORD, "role": "developer", "customer": customer });
    let (status, user) = call(server, Method::POST, "/api/v1/users", admin, Some(body)).await;
    assert_eq!(status, 201, "{user}");
    let login = json!({ "email": email, "password": PASSWORD });
    let response = http()
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .json(&login)
        .send()
        .await
        .expect("login");
    let (status, pair) = status_and_json(response).await;
    assert_eq!(status, 200, "{pair}");
    pair["access_token"].as_str().expect("token").to_owned()
}

/// A gzip tar holding `index.html` with `page`.
fn bundle(page: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_size(page.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "index.html", page.as_bytes())
        .expect("append");
    builder.into_inner().expect("tar").finish().expect("gzip")
}

/// Creates `domain` as the token's owner and deploys `page` to it.
async fn site_with_page(server: &Server, token: &str, domain: &str, page: &str) {
    let body = json!({ "domain": domain });
    let (status, site) = call(server, Method::POST, "/api/v1/sites", token, Some(body)).await;
    assert_eq!(status, 201, "{domain}: {site}");
    let (status, release) = upload(server, token, domain, bundle(page)).await;
    assert_eq!(status, 201, "{domain}: {release}");
}

async fn page_at(server: &Server, host: &str) -> (u16, String) {
    let response = server.get(host, "/").await;
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

async fn audit_events(server: &Server, admin: &str, query: &str, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let path = format!("/api/v1/audit?{query}");
        let (status, page) = call(server, Method::GET, &path, admin, None).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().expect("events").clone();
        if events.len() >= at_least || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_developer_cannot_claim_wildcards_suffixes_or_other_customers_names() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let victim = developer(&server, &admin, "globex").await;
    let attacker = developer(&server, &admin, "initech").await;
    for domain in ["a.localhost", "b.localhost", "shop.example.com"] {
        site_with_page(&server, &victim, domain, "victim").await;
    }

    // Each case of the attack report, with the status and rule it gets.
    let refused: &[(&str, u16, &str, &str)] = &[
        ("*.co.uk", 400, "invalid", "public suffix `co.uk`"),
        ("co.uk", 400, "invalid", "`co.uk` is a public suffix"),
        ("*.localhost", 400, "invalid", "public suffix `localhost`"),
        ("*.b.localhost", 403, "forbidden", "reserved for admins"),
        (
            "*.initech.localhost",
            403,
            "forbidden",
            "reserved for admins",
        ),
        ("localhost", 403, "forbidden", "reserved for admins"),
        ("www.a.localhost", 409, "conflict", "another customer"),
        ("deep.www.b.localhost", 409, "conflict", "another customer"),
        ("example.com", 409, "conflict", "another customer"),
        ("b.localhost", 409, "conflict", "another customer"),
    ];
    for (domain, status, code, rule) in refused {
        let body = json!({ "domain": domain });
        let (got, error) = call(
            &server,
            Method::POST,
            "/api/v1/sites",
            &attacker,
            Some(body),
        )
        .await;
        assert_eq!(got, *status, "{domain}: {error}");
        assert_eq!(error["error"]["code"], *code, "{domain}: {error}");
        assert_eq!(error["error"]["field"], "domain", "{domain}: {error}");
        let message = error["error"]["message"].as_str().expect("message");
        assert!(message.contains(rule), "{domain}: {message}");
    }

    // Nothing of the attacker's exists, and the edge still serves the
    // owner for its names and nothing for the names nearby.
    let (_, sites) = call(&server, Method::GET, "/api/v1/sites", &admin, None).await;
    let mut domains: Vec<&str> = sites
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| s["domain"].as_str().expect("domain"))
        .collect();
    domains.sort_unstable();
    assert_eq!(domains, ["a.localhost", "b.localhost", "shop.example.com"]);
    for host in ["a.localhost", "b.localhost", "shop.example.com"] {
        assert_eq!(
            page_at(&server, host).await,
            (200, "victim".into()),
            "{host}"
        );
    }
    for host in [
        "www.a.localhost",
        "x.b.localhost",
        "unclaimed.localhost",
        "localhost",
    ] {
        assert_eq!(page_at(&server, host).await.0, 404, "{host}");
    }

    // The ownership refusals are audit events, denied, naming the rule.
    let events = audit_events(&server, &admin, "type=domain.claim_denied", 7).await;
    let mut rules: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["result"], "denied", "{e}");
            (
                e["metadata"]["site"].as_str().unwrap_or("").to_owned(),
                e["metadata"]["rule"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    rules.sort();
    let expected = [
        ("*.b.localhost", "wildcard_admin_only"),
        ("*.initech.localhost", "wildcard_admin_only"),
        ("b.localhost", "overlaps_other_customer"),
        ("deep.www.b.localhost", "overlaps_other_customer"),
        ("example.com", "overlaps_other_customer"),
        ("localhost", "localhost_admin_only"),
        ("www.a.localhost", "overlaps_other_customer"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(s, r)| ((*s).to_owned(), (*r).to_owned()))
        .collect();
    assert_eq!(rules, expected);
}

#[tokio::test]
async fn ordinary_names_still_work_and_an_admin_can_create_a_wildcard() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let dev = developer(&server, &admin, "initech").await;
    let other = developer(&server, &admin, "globex").await;

    // A developer's own name, a name under it, and a sibling of another
    // customer's name are fine.
    site_with_page(&server, &dev, "initech.localhost", "initech").await;
    site_with_page(&server, &dev, "www.initech.localhost", "initech www").await;
    site_with_page(&server, &other, "globex.localhost", "globex").await;
    site_with_page(&server, &dev, "initech.example.co.uk", "initech uk").await;
    assert_eq!(
        page_at(&server, "www.initech.localhost").await,
        (200, "initech www".into())
    );
    assert_eq!(
        page_at(&server, "initech.example.co.uk").await,
        (200, "initech uk".into())
    );

    // The admin hands out a wildcard to a customer, and it serves every
    // unclaimed name under it while the exact site keeps its own.
    let body = json!({ "domain": "*.initech.localhost", "customer": "initech" });
    let (status, site) = call(&server, Method::POST, "/api/v1/sites", &admin, Some(body)).await;
    assert_eq!(status, 201, "{site}");
    let (status, release) = upload(
        &server,
        &dev,
        "*.initech.localhost",
        bundle("initech wildcard"),
    )
    .await;
    assert_eq!(status, 201, "{release}");
    assert_eq!(
        page_at(&server, "any.initech.localhost").await,
        (200, "initech wildcard".into())
    );
    assert_eq!(
        page_at(&server, "www.initech.localhost").await,
        (200, "initech www".into())
    );
    // Now the developer of that customer may add names under it; the
    // other customer may not.
    let body = json!({ "domain": "api.initech.localhost" });
    let (status, _) = call(
        &server,
        Method::POST,
        "/api/v1/sites",
        &dev,
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201);
    let body = json!({ "domain": "evil.initech.localhost" });
    let (status, _) = call(&server, Method::POST, "/api/v1/sites", &other, Some(body)).await;
    assert_eq!(status, 409);

    // Even an admin gets no wildcard over a public suffix.
    for domain in ["*.co.uk", "*.localhost", "*.github.io"] {
        let body = json!({ "domain": domain });
        let (status, error) =
            call(&server, Method::POST, "/api/v1/sites", &admin, Some(body)).await;
        assert_eq!(status, 400, "{domain}: {error}");
        assert_eq!(error["error"]["field"], "domain", "{error}");
    }
    // The admin's wildcard create is itself an audit event.
    let events = audit_events(&server, &admin, "type=site.create", 1).await;
    assert!(
        events
            .iter()
            .any(|e| e["metadata"]["site"] == "*.initech.localhost"
                && e["metadata"]["wildcard"] == true),
        "{events:?}"
    );
}
