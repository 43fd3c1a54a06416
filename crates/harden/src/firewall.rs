//! `spinforge firewall render`: an nftables ruleset for a SpinForge host.
//! Inbound is dropped unless it is part of a known connection, SSH from
//! the operator's networks, or web traffic within per-source limits. The
//! ruleset only filters `input`: forwarding and output stay as they are.

use crate::HardenError;
use std::fmt::Write;
use std::net::IpAddr;

/// What the ruleset admits.
#[derive(Debug, Clone)]
pub struct FirewallSpec {
    /// Networks SSH is allowed from; empty means from anywhere (rate
    /// limited).
    pub ssh_from: Vec<String>,
    pub ssh_port: u16,
    /// Web ports: 80, 443 and the configured edge listeners.
    pub web_ports: Vec<u16>,
    /// New connections per second per source address before drops.
    pub new_per_second: u32,
    /// Concurrent connections per source address.
    pub max_concurrent: u32,
    /// New TCP connections per second host-wide (SYN flood guard).
    pub syn_per_second: u32,
    /// Add the `banned4`/`banned6` sets `shield.nftables` syncs bans into.
    pub ban_sets: bool,
}

impl Default for FirewallSpec {
    fn default() -> FirewallSpec {
        FirewallSpec {
            ssh_from: Vec::new(),
            ssh_port: 22,
            web_ports: vec![80, 443],
            new_per_second: 50,
            max_concurrent: 200,
            syn_per_second: 500,
            ban_sets: false,
        }
    }
}

/// A CIDR (`203.0.113.0/24`, `2001:db8::/48`) or a lone address, checked
/// and normalised; the text never reaches the ruleset unparsed.
fn cidr(text: &str) -> Result<(bool, String), HardenError> {
    let bad = || HardenError::Invalid(format!("--ssh-from: `{text}` is not an address or CIDR"));
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err(bad());
    }
    Ok((ip.is_ipv4(), format!("{ip}/{prefix}")))
}

/// Renders the ruleset for `spec`.
pub fn render(spec: &FirewallSpec) -> Result<String, HardenError> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for text in &spec.ssh_from {
        match cidr(text)? {
            (true, c) => v4.push(c),
            (false, c) => v6.push(c),
        }
    }
    if spec.ssh_port == 0 || spec.web_ports.contains(&0) {
        return Err(HardenError::Invalid("ports must be 1 to 65535".into()));
    }
    for (name, value) in [
        ("--new-per-second", spec.new_per_second),
        ("--max-concurrent", spec.max_concurrent),
        ("--syn-per-second", spec.syn_per_second),
    ] {
        if value == 0 || value > 1_000_000 {
            return Err(HardenError::Invalid(format!(
                "{name} must be between 1 and 1000000"
            )));
        }
    }
    let mut web = spec.web_ports.clone();
    web.sort_unstable();
    web.dedup();
    web.retain(|p| *p != spec.ssh_port);
    let web = web
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");

    let mut o = String::new();
    let w = &mut o;
    // Writing to a String cannot fail.
    let _ = writeln!(w, "#!/usr/sbin/nft -f");
    let _ = writeln!(w, "# Rendered by `spinforge firewall render`. Load it with");
    let _ = writeln!(w, "# `nft -f FILE`; check it first with `nft -c -f FILE`.");
    let _ = writeln!(
        w,
        "# Replaces only the `inet spinforge` table; other tables stay."
    );
    let _ = writeln!(w, "table inet spinforge");
    let _ = writeln!(w, "delete table inet spinforge");
    let _ = writeln!(w);
    let _ = writeln!(w, "table inet spinforge {{");
    let _ = writeln!(
        w,
        "\tset web_ports {{\n\t\ttype inet_service\n\t\telements = {{ {web} }}\n\t}}"
    );
    if spec.ban_sets {
        let _ = writeln!(w, "\t# Filled by `serve` when shield.nftables = true.");
        let _ = writeln!(
            w,
            "\tset banned4 {{\n\t\ttype ipv4_addr\n\t\tflags interval, timeout\n\t}}"
        );
        let _ = writeln!(
            w,
            "\tset banned6 {{\n\t\ttype ipv6_addr\n\t\tflags interval, timeout\n\t}}"
        );
    }
    let _ = writeln!(
        w,
        "\t# Per-source meters: new-connection rate and concurrent connections."
    );
    for (family, kind) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        let _ = writeln!(
            w,
            "\tset web_rate{family} {{\n\t\ttype {kind}\n\t\tsize 65535\n\t\tflags dynamic, timeout\n\t\ttimeout 1m\n\t}}"
        );
        let _ = writeln!(
            w,
            "\tset web_conn{family} {{\n\t\ttype {kind}\n\t\tsize 65535\n\t\tflags dynamic\n\t}}"
        );
    }
    if spec.ssh_from.is_empty() {
        let _ = writeln!(
            w,
            "\tset ssh_rate4 {{\n\t\ttype ipv4_addr\n\t\tsize 65535\n\t\tflags dynamic, timeout\n\t\ttimeout 1m\n\t}}"
        );
        let _ = writeln!(
            w,
            "\tset ssh_rate6 {{\n\t\ttype ipv6_addr\n\t\tsize 65535\n\t\tflags dynamic, timeout\n\t\ttimeout 1m\n\t}}"
        );
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "\tchain input {{");
    let _ = writeln!(
        w,
        "\t\ttype filter hook input priority filter; policy drop;"
    );
    let _ = writeln!(w, "\t\tct state invalid drop");
    let _ = writeln!(w, "\t\tct state established,related accept");
    let _ = writeln!(w, "\t\tiif \"lo\" accept");
    if spec.ban_sets {
        let _ = writeln!(w, "\t\tip saddr @banned4 drop");
        let _ = writeln!(w, "\t\tip6 saddr @banned6 drop");
    }
    let _ = writeln!(
        w,
        "\t\t# Path MTU discovery and IPv6 neighbour discovery need ICMP."
    );
    let _ = writeln!(w, "\t\tip protocol icmp icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept");
    let _ = writeln!(
        w,
        "\t\tip protocol icmp icmp type echo-request limit rate 10/second accept"
    );
    let _ = writeln!(w, "\t\tmeta l4proto ipv6-icmp icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept");
    let _ = writeln!(
        w,
        "\t\tmeta l4proto ipv6-icmp icmpv6 type echo-request limit rate 10/second accept"
    );
    let _ = writeln!(
        w,
        "\t\t# SYN flood: new TCP connections host-wide beyond the budget are dropped."
    );
    let _ = writeln!(
        w,
        "\t\ttcp flags & (fin | syn | rst | ack) == syn jump syn_flood"
    );
    let port = spec.ssh_port;
    if spec.ssh_from.is_empty() {
        let _ = writeln!(w, "\t\t# SSH from anywhere (pass --ssh-from to restrict it), 10 new per minute per source.");
        let _ = writeln!(w, "\t\ttcp dport {port} ct state new update @ssh_rate4 {{ ip saddr limit rate over 10/minute }} drop");
        let _ = writeln!(w, "\t\ttcp dport {port} ct state new update @ssh_rate6 {{ ip6 saddr limit rate over 10/minute }} drop");
        let _ = writeln!(w, "\t\ttcp dport {port} accept");
    } else {
        let _ = writeln!(w, "\t\t# SSH only from the operator's networks.");
        if !v4.is_empty() {
            let _ = writeln!(
                w,
                "\t\tip saddr {{ {} }} tcp dport {port} accept",
                v4.join(", ")
            );
        }
        if !v6.is_empty() {
            let _ = writeln!(
                w,
                "\t\tip6 saddr {{ {} }} tcp dport {port} accept",
                v6.join(", ")
            );
        }
    }
    let rate = spec.new_per_second;
    let burst = rate.saturating_mul(2);
    let conc = spec.max_concurrent;
    let _ = writeln!(
        w,
        "\t\t# Web: per source at most {rate} new connections/s (burst {burst}) and {conc} open."
    );
    let _ = writeln!(w, "\t\ttcp dport @web_ports ct state new update @web_rate4 {{ ip saddr limit rate over {rate}/second burst {burst} packets }} drop");
    let _ = writeln!(w, "\t\ttcp dport @web_ports ct state new update @web_rate6 {{ ip6 saddr limit rate over {rate}/second burst {burst} packets }} drop");
    let _ = writeln!(w, "\t\ttcp dport @web_ports ct state new add @web_conn4 {{ ip saddr ct count over {conc} }} drop");
    let _ = writeln!(w, "\t\ttcp dport @web_ports ct state new add @web_conn6 {{ ip6 saddr ct count over {conc} }} drop");
    let _ = writeln!(w, "\t\ttcp dport @web_ports accept");
    let _ = writeln!(
        w,
        "\t\t# HTTP/3 would need UDP 443; the edge does not serve it."
    );
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w);
    let syn = spec.syn_per_second;
    let _ = writeln!(w, "\tchain syn_flood {{");
    let _ = writeln!(
        w,
        "\t\tlimit rate {syn}/second burst {} packets return",
        syn.saturating_mul(2)
    );
    let _ = writeln!(w, "\t\tdrop");
    let _ = writeln!(w, "\t}}");
    let _ = writeln!(w, "}}");
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_is_limited_to_the_given_networks_of_each_family() {
        let spec = FirewallSpec {
            ssh_from: vec!["203.0.113.7".into(), "2001:db8::/48".into()],
            web_ports: vec![443, 80, 8443, 80],
            ..FirewallSpec::default()
        };
        let rules = render(&spec).expect("render");
        assert!(
            rules.contains("ip saddr { 203.0.113.7/32 } tcp dport 22 accept"),
            "{rules}"
        );
        assert!(
            rules.contains("ip6 saddr { 2001:db8::/48 } tcp dport 22 accept"),
            "{rules}"
        );
        assert!(rules.contains("elements = { 80, 443, 8443 }"), "{rules}");
        assert!(rules.contains("policy drop;"));
        assert!(!rules.contains("banned4"));
    }

    #[test]
    fn bad_networks_and_limits_are_refused_naming_the_flag() {
        for bad in [
            "10.0.0.0/33",
            "example.com",
            "1.2.3.4/x",
            "1.2.3.4; drop table",
        ] {
            let spec = FirewallSpec {
                ssh_from: vec![bad.into()],
                ..FirewallSpec::default()
            };
            let error = render(&spec).expect_err(bad);
            assert!(error.to_string().starts_with("--ssh-from"), "{error}");
        }
        let spec = FirewallSpec {
            new_per_second: 0,
            ..FirewallSpec::default()
        };
        assert!(render(&spec)
            .expect_err("zero")
            .to_string()
            .contains("--new-per-second"));
    }
}
