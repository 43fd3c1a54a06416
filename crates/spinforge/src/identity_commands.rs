//! The identity commands: `whoami`, `users`, `apikeys`, `sessions` and
//! `keys`. Each is one or two API calls and a table, or the API's JSON
//! with `--json`.

use crate::cli::{ApiFlags, ApiKeysCommand, KeysCommand, SessionsCommand, UsersCommand};
use crate::client::{self, Client};
use crate::commands::{finish, print_json, seg, text};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use reqwest::Method;
use serde_json::{json, Value};

fn table(header: &[&str], rows: &[Value], keys: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY);
    table.set_header(header.to_vec());
    for row in rows {
        table.add_row(keys.iter().map(|k| text(row, k)).collect::<Vec<_>>());
    }
    table
}

pub(crate) async fn call(
    client: &mut Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let response = client
        .send(|c| {
            let request = c.request(method.clone(), path);
            match &body {
                Some(body) => request.json(body),
                None => request,
            }
        })
        .await?;
    let response = client::check(response).await?;
    let bytes = response.bytes().await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&bytes)?)
}

pub async fn whoami(api: &ApiFlags) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let me = call(&mut client, Method::GET, "/whoami", None).await?;
    if api.json {
        return print_json(&me);
    }
    let user = &me["user"];
    println!(
        "{} (id {}), role {}, customer {}, via {}",
        text(user, "email"),
        text(user, "id"),
        text(user, "role"),
        text(user, "customer"),
        text(&me, "method")
    );
    let permissions: Vec<String> = me["permissions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    println!("permissions: {}", permissions.join(" "));
    Ok(())
}

pub async fn users(api: &ApiFlags, command: UsersCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    let header = ["ID", "EMAIL", "ROLE", "CUSTOMER", "DISABLED", "CREATED"];
    let keys = ["id", "email", "role", "customer", "disabled", "created_at"];
    match command {
        UsersCommand::List => {
            let users = call(&mut client, Method::GET, "/users", None).await?;
            if api.json {
                return print_json(&users);
            }
            let rows = users.as_array().cloned().unwrap_or_default();
            println!("{}", table(&header, &rows, &keys));
        }
        UsersCommand::Show { id } => {
            let user = call(&mut client, Method::GET, &format!("/users/{id}"), None).await?;
            if api.json {
                return print_json(&user);
            }
            println!("{}", table(&header, std::slice::from_ref(&user), &keys));
        }
        UsersCommand::Create {
            email,
            role,
            customer,
            name,
            password_stdin,
        } => {
            let password = crate::admin::read_password(password_stdin, !password_stdin)?;
            let body = json!({
                "email": email, "password": password, "role": role,
                "customer": customer, "name": name,
            });
            let user = call(&mut client, Method::POST, "/users", Some(body)).await?;
            let message = format!(
                "created {} (id {})",
                text(&user, "email"),
                text(&user, "id")
            );
            return finish(api, &user, &message);
        }
        UsersCommand::Update {
            id,
            role,
            customer,
            name,
            disable,
            enable,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(role) = role {
                body.insert("role".into(), role.into());
            }
            if let Some(customer) = customer {
                body.insert("customer".into(), customer.into());
            }
            if let Some(name) = name {
                body.insert("name".into(), name.into());
            }
            if disable || enable {
                body.insert("disabled".into(), disable.into());
            }
            let path = format!("/users/{id}");
            let user = call(&mut client, Method::PATCH, &path, Some(Value::Object(body))).await?;
            return finish(api, &user, &format!("updated user {id}"));
        }
        UsersCommand::Delete { id } => {
            call(&mut client, Method::DELETE, &format!("/users/{id}"), None).await?;
            return finish(
                api,
                &json!({ "deleted": id }),
                &format!("deleted user {id}"),
            );
        }
        UsersCommand::Unlock { id } => {
            call(
                &mut client,
                Method::DELETE,
                &format!("/users/{id}/lock"),
                None,
            )
            .await?;
            return finish(
                api,
                &json!({ "unlocked": id }),
                &format!("unlocked user {id}"),
            );
        }
        UsersCommand::RevokeSessions { id } => {
            let path = format!("/users/{id}/sessions");
            let done = call(&mut client, Method::DELETE, &path, None).await?;
            let message = format!("ended {} sessions of user {id}", text(&done, "revoked"));
            return finish(api, &done, &message);
        }
    }
    Ok(())
}

pub async fn api_keys(api: &ApiFlags, command: ApiKeysCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    match command {
        ApiKeysCommand::Create {
            name,
            permissions,
            sites,
            expires_in_days,
        } => {
            let body = json!({
                "name": name, "permissions": permissions,
                "sites": if sites.is_empty() { Value::Null } else { json!(sites) },
                "expires_in_days": expires_in_days,
            });
            let key = call(&mut client, Method::POST, "/apikeys", Some(body)).await?;
            let message = format!(
                "created API key {} (shown once, store it now):\n{}",
                text(&key, "id"),
                text(&key, "key")
            );
            finish(api, &key, &message)
        }
        ApiKeysCommand::List => {
            let keys = call(&mut client, Method::GET, "/apikeys", None).await?;
            if api.json {
                return print_json(&keys);
            }
            let rows: Vec<Value> = keys
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut k| {
                    k["permissions"] = json!(k["permissions"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" "))
                        .unwrap_or_default());
                    k
                })
                .collect();
            let header = [
                "ID",
                "NAME",
                "PERMISSIONS",
                "EXPIRES",
                "LAST USED",
                "REVOKED",
            ];
            let keys = [
                "id",
                "name",
                "permissions",
                "expires_at",
                "last_used_at",
                "revoked",
            ];
            println!("{}", table(&header, &rows, &keys));
            Ok(())
        }
        ApiKeysCommand::Revoke { id } => {
            let path = format!("/apikeys/{}", seg(&id));
            call(&mut client, Method::DELETE, &path, None).await?;
            finish(api, &json!({ "revoked": id }), &format!("revoked {id}"))
        }
    }
}

pub async fn sessions(api: &ApiFlags, command: SessionsCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    match command {
        SessionsCommand::List => {
            let sessions = call(&mut client, Method::GET, "/sessions", None).await?;
            if api.json {
                return print_json(&sessions);
            }
            let rows = sessions.as_array().cloned().unwrap_or_default();
            let header = ["ID", "KIND", "CREATED", "LAST SEEN", "CLIENT", "CURRENT"];
            let keys = [
                "id",
                "kind",
                "created_at",
                "last_seen_at",
                "client_ip",
                "current",
            ];
            println!("{}", table(&header, &rows, &keys));
            Ok(())
        }
        SessionsCommand::Revoke { id } => {
            let path = format!("/sessions/{}", seg(&id));
            call(&mut client, Method::DELETE, &path, None).await?;
            finish(api, &json!({ "revoked": id }), "session ended")
        }
    }
}

pub async fn keys(api: &ApiFlags, command: KeysCommand) -> anyhow::Result<()> {
    let mut client = Client::new(&api.api)?;
    match command {
        KeysCommand::RotateSigning => {
            let done = call(&mut client, Method::POST, "/keys/signing/rotate", None).await?;
            let message = format!("new signing key {} is active", text(&done, "kid"));
            finish(api, &done, &message)
        }
        master => crate::secrets_cli::master_keys(api, master).await,
    }
}
