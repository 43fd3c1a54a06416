//! The rendered ruleset is checked by Debian's `nft -c -f` in a network
//! namespace this test creates (`unshare -n`), so the host's own firewall
//! is never read or touched. Needs root and the `nftables` package; CI
//! installs it (.ci/run). Without them the test says so and fails, rather
//! than passing silently.

use harden::firewall::{render, FirewallSpec};
use std::process::Command;

fn nft_check(rules: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("rules.nft");
    std::fs::write(&path, rules).expect("write");
    let output = Command::new("unshare")
        .args(["-n", "nft", "-c", "-f"])
        .arg(&path)
        .output()
        .expect("unshare and nft must be installed (apt nftables, util-linux)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn rendered_rulesets_pass_nft_check_in_a_fresh_namespace() {
    let specs = [
        FirewallSpec::default(),
        FirewallSpec {
            ssh_from: vec!["192.0.2.0/24".into(), "2001:db8::/32".into()],
            web_ports: vec![80, 443, 8080, 8443],
            ban_sets: true,
            ..FirewallSpec::default()
        },
        FirewallSpec {
            ssh_from: vec!["2001:db8::1".into()],
            ssh_port: 2222,
            ..FirewallSpec::default()
        },
    ];
    for spec in &specs {
        let rules = render(spec).expect("render");
        let (ok, stderr) = nft_check(&rules);
        assert!(ok, "nft -c refused the ruleset: {stderr}\n{rules}");
    }
}

#[test]
fn nft_check_does_refuse_a_broken_ruleset() {
    // The check above is only worth something if nft -c can say no.
    let mut rules = render(&FirewallSpec::default()).expect("render");
    rules = rules.replace("policy drop;", "policy sometimes;");
    let (ok, _) = nft_check(&rules);
    assert!(!ok, "nft -c accepted a broken ruleset");
}
