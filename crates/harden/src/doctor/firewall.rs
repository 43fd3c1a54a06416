//! Inbound firewall: is inbound denied by default, and which TCP ports
//! are accepted? Reads the live ruleset on this host (`nft list ruleset`,
//! else `iptables-save`), else a saved one in the root tree
//! (`/etc/nftables.conf`, `/etc/iptables/rules.v4`). Rules it cannot
//! follow (variables, unknown verdict maps) make the port check "could not
//! check" rather than a guess.

use super::{tool, verdict, Check, Context, Status};
use std::collections::{BTreeSet, HashMap};

const DENY_WHY: &str =
    "with inbound allowed by default, every service that listens by mistake is on the internet";
const PORTS_WHY: &str = "each open port is attack surface; only SSH, the web ports and SpinForge's listeners should be reachable";

/// What a ruleset says about inbound traffic.
#[derive(Debug, Default)]
struct Inbound {
    source: String,
    /// Some input chain drops by default (per family: v4, v6).
    deny_v4: bool,
    deny_v6: bool,
    /// An input chain exists at all.
    has_input: bool,
    /// Accepted TCP destination ports in the default-drop input chains.
    ports: BTreeSet<u16>,
    /// Rules that accept every port (from somewhere).
    accept_all: Vec<String>,
    /// Rules we could not follow.
    unclear: Vec<String>,
}

fn service_port(name: &str) -> Option<u16> {
    match name {
        "ssh" => Some(22),
        "http" => Some(80),
        "https" => Some(443),
        "domain" => Some(53),
        "smtp" => Some(25),
        _ => name.parse().ok(),
    }
}

/// Ports in an nft port expression: `22`, `{ 80, 443 }`, `8000-8010`.
fn nft_ports(
    expr: &str,
    sets: &HashMap<String, String>,
    out: &mut BTreeSet<u16>,
) -> Result<(), String> {
    let expr = expr.trim();
    if let Some(name) = expr.strip_prefix('@') {
        let elements = sets
            .get(name)
            .ok_or_else(|| format!("set @{name} has no elements we can read"))?;
        return nft_ports(elements, sets, out);
    }
    let inner = expr.trim_start_matches('{').trim_end_matches('}');
    for item in inner.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        if let Some((a, b)) = item.split_once('-') {
            let (Some(a), Some(b)) = (service_port(a.trim()), service_port(b.trim())) else {
                return Err(format!("port range `{item}`"));
            };
            if b.saturating_sub(a) > 1024 {
                return Err(format!("port range `{item}` is wider than 1024 ports"));
            }
            out.extend(a..=b);
        } else {
            out.insert(service_port(item).ok_or_else(|| format!("port `{item}`"))?);
        }
    }
    Ok(())
}

/// The text after `dport` up to the next keyword (a set in braces, or one
/// word).
fn after_dport(rule: &str) -> Option<&str> {
    let at = rule.find("dport ")? + "dport ".len();
    let rest = &rule[at..];
    if rest.starts_with('{') {
        let end = rest.find('}')?;
        Some(&rest[..=end])
    } else {
        rest.split_whitespace().next()
    }
}

fn parse_nft(text: &str, source: &str) -> Inbound {
    let mut inbound = Inbound {
        source: source.to_owned(),
        ..Inbound::default()
    };
    // table -> (chains: name -> (hook, policy, family, rules), sets)
    struct Chain {
        family: String,
        hook: Option<String>,
        policy_drop: bool,
        rules: Vec<String>,
    }
    let mut chains: Vec<(String, String, Chain)> = Vec::new();
    let mut sets: HashMap<String, String> = HashMap::new();
    let mut family = String::new();
    let mut table = String::new();
    let mut chain: Option<(String, Chain)> = None;
    let mut set: Option<String> = None;
    let mut pending_elements: Option<(String, String)> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((name, acc)) = pending_elements.as_mut() {
            acc.push(' ');
            acc.push_str(line);
            if line.contains('}') {
                sets.insert(name.clone(), acc.clone());
                pending_elements = None;
            }
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", fam, name, "{"] => {
                family = fam.to_string();
                table = name.to_string();
            }
            ["table", name, "{"] => {
                family = "ip".into();
                table = name.to_string();
            }
            ["chain", name, "{"] => {
                chain = Some((
                    name.to_string(),
                    Chain {
                        family: family.clone(),
                        hook: None,
                        policy_drop: false,
                        rules: Vec::new(),
                    },
                ))
            }
            ["set", name, "{"] | ["map", name, "{"] => set = Some(name.to_string()),
            ["}"] => {
                if set.take().is_none() {
                    if let Some((name, c)) = chain.take() {
                        chains.push((table.clone(), name, c));
                    }
                }
            }
            _ => {
                if let Some(name) = &set {
                    if let Some(rest) = line.strip_prefix("elements = ") {
                        if rest.contains('}') {
                            sets.insert(name.clone(), rest.to_owned());
                        } else {
                            pending_elements = Some((name.clone(), rest.to_owned()));
                        }
                    }
                } else if let Some((_, c)) = chain.as_mut() {
                    if line.starts_with("type ") && line.contains(" hook ") {
                        c.hook = line
                            .split_whitespace()
                            .skip_while(|w| *w != "hook")
                            .nth(1)
                            .map(str::to_owned);
                        c.policy_drop = line.replace(' ', "").contains("policydrop;");
                    } else {
                        c.rules.push(line.to_owned());
                    }
                }
            }
        }
    }

    let by_name: HashMap<(String, String), &Chain> = chains
        .iter()
        .map(|(t, n, c)| ((t.clone(), n.clone()), c))
        .collect();
    for (t, _, c) in &chains {
        if c.hook.as_deref() != Some("input") {
            continue;
        }
        inbound.has_input = true;
        let last_drops = c
            .rules
            .last()
            .is_some_and(|r| matches!(r.trim_start_matches("counter ").trim(), "drop" | "reject"));
        let deny = c.policy_drop || last_drops;
        match c.family.as_str() {
            "inet" => {
                inbound.deny_v4 |= deny;
                inbound.deny_v6 |= deny;
            }
            "ip" => inbound.deny_v4 |= deny,
            "ip6" => inbound.deny_v6 |= deny,
            _ => {}
        }
        if !deny {
            continue;
        }
        // Follow jumps and gotos within the table, once each.
        let mut queue: Vec<&Chain> = vec![c];
        let mut seen = BTreeSet::new();
        while let Some(chain) = queue.pop() {
            for rule in &chain.rules {
                for verb in ["jump ", "goto "] {
                    if let Some(at) = rule.find(verb) {
                        let target = rule[at + verb.len()..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("");
                        if seen.insert(target.to_owned()) {
                            if let Some(next) = by_name.get(&(t.clone(), target.to_owned())) {
                                queue.push(next);
                            }
                        }
                    }
                }
                if !rule.split_whitespace().any(|w| w == "accept") {
                    continue;
                }
                let harmless = ["ct state", "iif", "iifname", "icmp", "ipv6-icmp", "icmpv6"]
                    .iter()
                    .any(|k| rule.contains(k));
                if rule.contains("dport") {
                    let Some(expr) = after_dport(rule) else {
                        inbound.unclear.push(rule.clone());
                        continue;
                    };
                    if let Err(e) = nft_ports(expr, &sets, &mut inbound.ports) {
                        inbound.unclear.push(format!("{rule} ({e})"));
                    }
                } else if !harmless {
                    inbound.accept_all.push(rule.clone());
                }
            }
        }
    }
    inbound
}

fn parse_iptables(text: &str, source: &str, v6: bool) -> Inbound {
    let mut inbound = Inbound {
        source: source.to_owned(),
        ..Inbound::default()
    };
    let mut in_filter = false;
    let mut input_chains: BTreeSet<String> = BTreeSet::from(["INPUT".to_owned()]);
    let mut rules: Vec<&str> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('*') {
            in_filter = line == "*filter";
            continue;
        }
        if !in_filter {
            continue;
        }
        if let Some(rest) = line.strip_prefix(":INPUT ") {
            inbound.has_input = true;
            let deny = rest.starts_with("DROP") || rest.starts_with("REJECT");
            if v6 {
                inbound.deny_v6 = deny;
            } else {
                inbound.deny_v4 = deny;
            }
        } else if line.starts_with("-A ") {
            rules.push(line);
        }
    }
    // Chains reached from INPUT by -j, then their ACCEPT rules.
    let mut changed = true;
    while changed {
        changed = false;
        for rule in &rules {
            let words: Vec<&str> = rule.split_whitespace().collect();
            if words.len() > 1 && input_chains.contains(words[1]) {
                if let Some(i) = words.iter().position(|w| *w == "-j") {
                    if let Some(target) = words.get(i + 1) {
                        if !matches!(*target, "ACCEPT" | "DROP" | "REJECT" | "RETURN" | "LOG")
                            && input_chains.insert(target.to_string())
                        {
                            changed = true;
                        }
                    }
                }
            }
        }
    }
    for rule in &rules {
        let words: Vec<&str> = rule.split_whitespace().collect();
        let in_input = words.len() > 1 && input_chains.contains(words[1]);
        let accepts = rule.ends_with("-j ACCEPT") || rule.contains("-j ACCEPT ");
        if !in_input || !accepts {
            continue;
        }
        let port_flag = words
            .iter()
            .position(|w| *w == "--dport" || *w == "--dports");
        if let Some(i) = port_flag {
            let spec = words.get(i + 1).copied().unwrap_or("").replace(':', "-");
            if let Err(e) = nft_ports(&spec, &HashMap::new(), &mut inbound.ports) {
                inbound.unclear.push(format!("{rule} ({e})"));
            }
        } else {
            let harmless = ["--state", "--ctstate", "-i lo", "icmp"]
                .iter()
                .any(|k| rule.contains(k));
            if !harmless {
                inbound.accept_all.push(rule.to_string());
            }
        }
    }
    // A final unconditional DROP in INPUT is a default deny too.
    if rules
        .last()
        .is_some_and(|r| *r == "-A INPUT -j DROP" || *r == "-A INPUT -j REJECT")
    {
        if v6 {
            inbound.deny_v6 = true;
        } else {
            inbound.deny_v4 = true;
        }
    }
    inbound
}

fn load(ctx: &Context) -> Result<Inbound, String> {
    if ctx.live() {
        if let Some(text) = tool("nft", &["list", "ruleset"]).filter(|t| t.contains("table")) {
            return Ok(parse_nft(&text, "nft list ruleset"));
        }
        if let Some(text) = tool("iptables-save", &[]).filter(|t| t.contains("*filter")) {
            let mut inbound = parse_iptables(&text, "iptables-save", false);
            if let Some(text6) = tool("ip6tables-save", &[]).filter(|t| t.contains("*filter")) {
                inbound.deny_v6 = parse_iptables(&text6, "ip6tables-save", true).deny_v6;
            }
            return Ok(inbound);
        }
    }
    let nft = ctx.path("/etc/nftables.conf");
    let v4 = ctx.path("/etc/iptables/rules.v4");
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    if nft.exists() {
        let text = read(&nft)?;
        if text.contains("hook input") {
            return Ok(parse_nft(&text, &nft.display().to_string()));
        }
    }
    if v4.exists() {
        let mut inbound = parse_iptables(&read(&v4)?, &v4.display().to_string(), false);
        let v6 = ctx.path("/etc/iptables/rules.v6");
        if v6.exists() {
            inbound.deny_v6 = parse_iptables(&read(&v6)?, "rules.v6", true).deny_v6;
        }
        return Ok(inbound);
    }
    Err(format!(
        "no live ruleset readable and no saved one at {} or {}",
        nft.display(),
        v4.display()
    ))
}

/// Ports expected open: SSH (from the sshd config, default 22), 80, 443
/// and SpinForge's edge listeners (and the API when it is not on
/// loopback).
fn expected_ports(ctx: &Context) -> BTreeSet<u16> {
    let mut ports = BTreeSet::from([80, 443]);
    let ssh = super::ssh::parse_sshd_config(&ctx.root)
        .ok()
        .and_then(|c| c.global.get("port").and_then(|p| p.parse().ok()))
        .unwrap_or(22);
    ports.insert(ssh);
    if let Ok(serve) = &ctx.serve {
        ports.insert(serve.listen.port());
        ports.insert(serve.tls_listen.port());
        if !serve.api_listen.ip().is_loopback() {
            ports.insert(serve.api_listen.port());
        }
    }
    ports
}

pub(super) fn checks(ctx: &Context) -> Vec<Check> {
    let fix_deny = "spinforge firewall render --ssh-from YOUR_NETWORK > /etc/nftables.d/spinforge.nft, check it with nft -c -f, then load it with nft -f";
    let inbound = match load(ctx) {
        Ok(inbound) => inbound,
        Err(reason) => {
            return vec![
                verdict(
                    "firewall.default_deny",
                    "inbound denied by default",
                    DENY_WHY,
                    Status::Unknown,
                    reason.clone(),
                    fix_deny,
                ),
                verdict(
                    "firewall.open_ports",
                    "only expected ports open",
                    PORTS_WHY,
                    Status::Unknown,
                    reason,
                    fix_deny,
                ),
            ]
        }
    };
    let src = &inbound.source;
    let (status, detail) = match (inbound.has_input, inbound.deny_v4, inbound.deny_v6) {
        (false, _, _) => (
            Status::Fail,
            format!("no input chain in {src}: all inbound traffic is accepted"),
        ),
        (_, true, true) => (Status::Pass, format!("input drops by default ({src})")),
        (_, true, false) => (
            Status::Warn,
            format!("IPv4 input drops by default but IPv6 does not ({src})"),
        ),
        (_, false, true) => (
            Status::Warn,
            format!("IPv6 input drops by default but IPv4 does not ({src})"),
        ),
        (_, false, false) => (Status::Fail, format!("input accepts by default ({src})")),
    };
    let mut out = vec![verdict(
        "firewall.default_deny",
        "inbound denied by default",
        DENY_WHY,
        status,
        detail,
        fix_deny,
    )];

    let expected = expected_ports(ctx);
    let unexpected: Vec<u16> = inbound.ports.difference(&expected).copied().collect();
    let list = |s: &BTreeSet<u16>| s.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let (status, detail) = if !(inbound.deny_v4 || inbound.deny_v6) {
        (
            Status::Fail,
            "inbound is not default-deny, so every listening port is open".to_owned(),
        )
    } else if !inbound.accept_all.is_empty() {
        (
            Status::Fail,
            format!(
                "rules accept every port: {}",
                inbound.accept_all.join(" | ")
            ),
        )
    } else if !inbound.unclear.is_empty() {
        (
            Status::Unknown,
            format!("cannot follow: {}", inbound.unclear.join(" | ")),
        )
    } else if !unexpected.is_empty() {
        let unexpected: BTreeSet<u16> = unexpected.into_iter().collect();
        (
            Status::Warn,
            format!(
                "open: {}; not expected: {} (expected {})",
                list(&inbound.ports),
                list(&unexpected),
                list(&expected)
            ),
        )
    } else {
        (
            Status::Pass,
            format!(
                "open: {} (expected {})",
                list(&inbound.ports),
                list(&expected)
            ),
        )
    };
    out.push(verdict("firewall.open_ports", "only expected ports open", PORTS_WHY, status, detail, "remove the accept rules for the unexpected ports, or render a fresh ruleset with spinforge firewall render"));
    out
}
