//! Audit sinks through the real binary: every stored event goes to a
//! syslog receiver over TCP (RFC 5424, octet-counted); critical events
//! also go to a second syslog receiver over UDP and to a webhook whose
//! signature the receiver checks. All receivers are test sockets on
//! 127.0.0.1 that record what arrives.
// A panic is how a test reports a failed step.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac_check::valid_signature;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const SECRET: &str = "test-webhook-secret-0123456789";

mod hmac_check {
    use sha2::{Digest, Sha256};

    /// HMAC-SHA256 by its definition (RFC 2104), so the test does not
    /// trust the code it checks.
    fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut block = [0u8; 64];
        block[..key.len()].copy_from_slice(key);
        let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    /// True iff `header` is `t=UNIX,v1=HEX` with HEX = HMAC(secret, UNIX.body).
    pub fn valid_signature(header: &str, secret: &[u8], body: &[u8]) -> bool {
        let Some((t, v1)) = header.split_once(',') else {
            return false;
        };
        let (Some(unix), Some(given)) = (t.strip_prefix("t="), v1.strip_prefix("v1=")) else {
            return false;
        };
        let mut message = format!("{unix}.").into_bytes();
        message.extend_from_slice(body);
        hex::encode(hmac_sha256(secret, &message)) == given
    }
}

#[derive(Default)]
struct Received {
    tcp: Vec<String>,
    udp: Vec<String>,
    /// (signature header valid, body)
    webhook: Vec<(bool, serde_json::Value)>,
}

async fn wait_until(received: &Mutex<Received>, done: impl Fn(&Received) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&received.lock().expect("lock")) {
        assert!(Instant::now() < deadline, "sinks did not receive in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn events_reach_syslog_and_critical_ones_the_signed_webhook() {
    let received = Arc::new(Mutex::new(Received::default()));

    // Syslog over TCP: octet-counted frames "LEN SP MSG".
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind tcp");
    let tcp_addr = tcp.local_addr().expect("tcp addr");
    let sink = received.clone();
    tokio::spawn(async move {
        let (mut stream, _) = tcp.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            while let Some(space) = buf.iter().position(|b| *b == b' ') {
                let len: usize = std::str::from_utf8(&buf[..space])
                    .expect("ascii length")
                    .parse()
                    .expect("octet count");
                if buf.len() < space + 1 + len {
                    break;
                }
                let frame =
                    String::from_utf8(buf[space + 1..space + 1 + len].to_vec()).expect("utf-8");
                buf.drain(..space + 1 + len);
                sink.lock().expect("lock").tcp.push(frame);
            }
        }
    });

    // Syslog over UDP: one message per datagram.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let sink = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = udp.recv(&mut buf).await {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            sink.lock().expect("lock").udp.push(text);
        }
    });

    // The webhook receiver checks the signature itself.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let signature = headers
                    .get("x-spinforge-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let valid = valid_signature(signature, SECRET.as_bytes(), &body);
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                sink.lock().expect("lock").webhook.push((valid, json));
                StatusCode::NO_CONTENT
            }
        }),
    );
    tokio::spawn(async move { axum::serve(hook, app).await });

    let root = tempfile::tempdir().unwrap();
    let secret_file = root.path().join("webhook.secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let config = format!(
        "{LOOPBACK_UPSTREAMS}\n[audit.sink]\nsyslog = \"tcp://{tcp_addr}\"\n\n\
         [audit.critical_sink]\nsyslog = \"udp://{udp_addr}\"\n\
         webhook_url = \"http://{hook_addr}/hook\"\nwebhook_secret_file = \"{}\"\n",
        secret_file.display()
    );
    let server = Server::start_with(&config);
    let _token = server.admin_token().await;
    let failed = http()
        .post(format!("{}/api/v1/auth/login", server.api_url()))
        .json(&serde_json::json!({ "email": ADMIN_EMAIL, "password": "not it" }))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 401);

    wait_until(&received, |r| {
        r.tcp.iter().any(|m| m.contains(" auth.failed "))
            && !r.udp.is_empty()
            && !r.webhook.is_empty()
    })
    .await;
    let r = received.lock().unwrap();

    // Every event over TCP, as RFC 5424: <PRI>1 TIME HOST APP PID MSGID SD MSG.
    let failure = r.tcp.iter().find(|m| m.contains(" auth.failed ")).unwrap();
    assert!(failure.starts_with("<84>1 "), "{failure}");
    let parts: Vec<&str> = failure.splitn(8, ' ').collect();
    assert_eq!(parts[3], "spinforge");
    assert_eq!(parts[5], "auth.failed");
    assert_eq!(parts[6], "[audit@32473", "{failure}");
    assert!(parts[7].starts_with("seq=\""), "{failure}");
    let json = parts[7].split_once("] ").map(|(_, m)| m).expect("MSG");
    let event: serde_json::Value = serde_json::from_str(json).expect("MSG is the event's JSON");
    assert_eq!(event["type"], "auth.failed");
    assert!(r.tcp.iter().any(|m| m.contains(" auth.succeeded ")));
    assert!(r.tcp.iter().any(|m| m.contains(" system.start ")));

    // Only critical types on the critical sinks.
    assert!(
        r.udp.iter().all(|m| m.contains(" auth.failed ")),
        "{:?}",
        r.udp
    );
    assert!(r.webhook.iter().all(|(valid, _)| *valid), "bad signature");
    let types: Vec<&str> = r
        .webhook
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(types, vec!["auth.failed"]);
    assert_eq!(r.webhook[0].1["result"], "failure");
}
