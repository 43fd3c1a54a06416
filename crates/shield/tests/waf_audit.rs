//! The audit event a WAF verdict writes: target `spinforge::audit`, the
//! event name by mode, rule ids, score, class and a redacted fragment.

use std::io::Write;
use std::sync::{Arc, Mutex};

use shield::waf::{Mode, RequestView, SiteWafConfig, Waf};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with a JSON subscriber and returns the events it wrote.
fn captured(f: impl FnOnce()) -> Vec<serde_json::Value> {
    let buf = Buffer::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buf.0.lock().expect("buffer lock").clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

/// The address the test requests come from.
const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

const SECRET: &str = "tok_4f9a8b7c6d5e4f3a2b1c0d9e";

fn attack_target() -> String {
    format!("/login?user=admin%27%20OR%20%271%27=%271%27--%20{SECRET}")
}

#[test]
fn a_block_writes_one_waf_block_event_with_rules_score_class_and_redacted_fragment() {
    let waf = Waf::new().expect("rules compile");
    let target = attack_target();
    let req = RequestView {
        method: "GET",
        target: &target,
        headers: &[],
        body: b"",
    };
    let events = captured(|| {
        waf.inspect(&req, &SiteWafConfig::default())
            .audit("shop.test", "req-42", CLIENT)
    });

    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["target"], "spinforge::audit");
    let f = &e["fields"];
    assert_eq!(f["event"], "waf.block");
    assert_eq!(f["site"], "shop.test");
    assert_eq!(f["request_id"], "req-42");
    assert_eq!(f["client_ip"], "192.0.2.7");
    assert_eq!(f["class"], "sqli");
    assert!(f["rules"].as_str().expect("rules").contains("2001"));
    assert!(f["score"].as_u64().expect("score") >= 5);
    let fragment = f["fragment"].as_str().expect("fragment");
    assert!(fragment.starts_with("ARGS:user="), "{fragment}");
    assert!(
        !fragment.contains(SECRET),
        "long tokens are redacted: {fragment}"
    );
    assert!(fragment.len() < 300);
}

#[test]
fn detect_mode_writes_waf_detect_and_a_clean_request_writes_nothing() {
    let waf = Waf::new().expect("rules compile");
    let site = SiteWafConfig {
        mode: Mode::Detect,
        ..Default::default()
    };
    let target = attack_target();
    let attack = RequestView {
        method: "GET",
        target: &target,
        headers: &[],
        body: b"",
    };
    let events = captured(|| {
        waf.inspect(&attack, &site)
            .audit("shop.test", "req-1", CLIENT)
    });
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["fields"]["event"], "waf.detect");

    let clean = RequestView {
        method: "GET",
        target: "/?q=it%27s+fine",
        headers: &[],
        body: b"",
    };
    let events = captured(|| {
        waf.inspect(&clean, &site)
            .audit("shop.test", "req-2", CLIENT)
    });
    assert!(events.is_empty(), "{events:?}");
}
