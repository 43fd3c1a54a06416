//! Scoped audit reads through the real binary: a developer sees the
//! audit events of its own customer's sites and never another
//! customer's, even when it asks for them by user or resource.

mod common;

use common::*;
use flate2::{write::GzEncoder, Compression};
use reqwest::Method;
use serde_json::{json, Value};

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

/// A developer of `customer` with one deployed site: (user id, token).
async fn tenant(server: &Server, admin: &str, customer: &str) -> (i64, String) {
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
    let token = pair["access_token"].as_str().expect("token").to_owned();
    let domain = format!("{customer}.example.com");
    let site = json!({ "domain": domain });
    let (status, _) = call(server, Method::POST, "/api/v1/sites", &token, Some(site)).await;
    assert_eq!(status, 201);
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_size(2);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "index.html", &b"ok"[..])
        .expect("append");
    let bundle = builder.into_inner().expect("tar").finish().expect("gzip");
    let (status, _) = upload(server, &token, &domain, bundle).await;
    assert_eq!(status, 201);
    (user["id"].as_i64().expect("id"), token)
}

fn resources(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["resource"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn a_developer_cannot_see_another_customers_events() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (_, acme) = tenant(&server, &admin, "acme").await;
    let (globex_id, globex) = tenant(&server, &admin, "globex").await;

    // The admin sees both deploys.
    let (status, all) = call(
        &server,
        Method::GET,
        "/api/v1/audit?type=site.deploy",
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut both = resources(&all);
    both.sort();
    assert_eq!(both, ["site:acme.example.com", "site:globex.example.com"]);

    // Each developer sees its own only.
    for (token, own) in [
        (&acme, "site:acme.example.com"),
        (&globex, "site:globex.example.com"),
    ] {
        let (status, page) = call(
            &server,
            Method::GET,
            "/api/v1/audit?type=site.",
            token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{page}");
        // Its own site's events (create and deploy), and no other's.
        let mut seen = resources(&page);
        assert_eq!(seen.len(), 2, "{page}");
        seen.dedup();
        assert_eq!(seen, [own], "{page}");
    }

    // Asking for the other customer's user or site by name finds nothing.
    for query in [
        format!("/api/v1/audit?user={globex_id}"),
        "/api/v1/audit?resource=site:globex.example.com".to_owned(),
    ] {
        let (status, page) = call(&server, Method::GET, &query, &acme, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["events"], json!([]), "{query}: {page}");
    }
}

/// The events of `kind` (a type prefix) that `token` may read.
async fn events(server: &Server, token: &str, kind: &str) -> Vec<Value> {
    let path = format!("/api/v1/audit?type={kind}");
    let (status, page) = call(server, Method::GET, &path, token, None).await;
    assert_eq!(status, 200, "{page}");
    page["events"].as_array().expect("events").clone()
}

#[tokio::test]
async fn tenant_events_name_their_customer_role_and_api_key_and_refusals_are_audited() {
    let server = Server::start();
    let admin = server.admin_token().await;
    let (acme_id, acme) = tenant(&server, &admin, "acme").await;
    let (_, globex) = tenant(&server, &admin, "globex").await;

    // A key the developer makes, then uses to write a secret.
    let body = json!({ "name": "ci", "permissions": ["sites:read", "secrets:write"] });
    let (status, key) = call(&server, Method::POST, "/api/v1/apikeys", &acme, Some(body)).await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().expect("key id").to_owned();
    let secret = key["key"].as_str().expect("key").to_owned();
    let path = "/api/v1/sites/acme.example.com/secrets/DB_URL";
    let value = json!({ "value": "postgres://app@db/app" });
    let (status, body) = call(&server, Method::PUT, path, &secret, Some(value.clone())).await;
    assert_eq!(status, 200, "{body}");

    // A platform admin acting on the tenant's site: still the tenant's event.
    let admin_path = "/api/v1/sites/acme.example.com/secrets/SET_BY_ADMIN";
    let admin_value = json!({ "value": "by the operator" });
    let (status, body) = call(&server, Method::PUT, admin_path, &admin, Some(admin_value)).await;
    assert_eq!(status, 200, "{body}");

    // Refusals: a name that breaks the naming rule, and a key wider than
    // its creator.
    let bad = "/api/v1/sites/acme.example.com/secrets/bad%20name";
    let (status, body) = call(&server, Method::PUT, bad, &secret, Some(value)).await;
    assert_eq!(status, 400, "{body}");
    let wide = json!({ "name": "wide", "permissions": ["users:manage"] });
    let (status, body) = call(&server, Method::POST, "/api/v1/apikeys", &acme, Some(wide)).await;
    assert!(status == 403 || status == 400, "{status} {body}");

    // The developer sees its own tenant's secret and key events.
    let all = events(&server, &acme, "secret.").await;
    assert_eq!(all.len(), 3, "{all:?}");
    let by_admin: Vec<&Value> = all
        .iter()
        .filter(|e| e["actor"]["role"] == "admin")
        .collect();
    assert_eq!(by_admin.len(), 1, "{all:?}");
    assert_eq!(by_admin[0]["actor"]["api_key_id"], Value::Null);
    assert_eq!(by_admin[0]["customer"], all[0]["customer"]);
    let secrets: Vec<Value> = all
        .iter()
        .filter(|e| e["actor"]["role"] != "admin")
        .cloned()
        .collect();
    let results: Vec<&str> = secrets
        .iter()
        .map(|e| e["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(secrets.len(), 2, "{secrets:?}");
    assert!(
        results.contains(&"success") && results.contains(&"denied"),
        "{secrets:?}"
    );
    for e in &secrets {
        assert_eq!(e["actor"]["user_id"], acme_id, "{e}");
        assert_eq!(e["actor"]["role"], "developer", "{e}");
        assert_eq!(e["actor"]["api_key_id"], key_id.as_str(), "{e}");
        assert!(e["customer"].is_string(), "{e}");
    }
    let denied = secrets
        .iter()
        .find(|e| e["result"] == "denied")
        .expect("denied");
    assert!(
        denied["metadata"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("name")),
        "{denied}"
    );

    let keys = events(&server, &acme, "apikey.").await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    let refused = keys
        .iter()
        .find(|e| e["result"] == "denied")
        .expect("refusal");
    assert_eq!(refused["actor"]["role"], "developer", "{refused}");
    assert!(
        refused["metadata"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{refused}"
    );

    // Another tenant sees none of it; the admin sees all of it.
    assert_eq!(
        events(&server, &globex, "secret.").await,
        Vec::<Value>::new()
    );
    assert_eq!(
        events(&server, &globex, "apikey.").await,
        Vec::<Value>::new()
    );
    assert_eq!(events(&server, &admin, "secret.").await.len(), 3);

    // A rejected credential's address is anonymised like every other.
    let (status, _) = call(
        &server,
        Method::GET,
        "/api/v1/sites",
        "sf_not_a_token",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let rejected = events(&server, &admin, "auth.token_rejected").await;
    assert!(!rejected.is_empty());
    for e in &rejected {
        assert_eq!(e["client_ip"], "127.0.0.0", "{e}");
    }
}
