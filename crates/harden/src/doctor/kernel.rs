//! Kernel network and hardening settings, read from `<root>/proc/sys`.

use super::{verdict, Check, Context, Status};

/// One sysctl check: every key must satisfy `rule`; the worst verdict of
/// the keys wins. Keys under a missing `net/ipv6` (IPv6 off) are skipped.
struct Sysctl {
    id: &'static str,
    title: &'static str,
    keys: &'static [&'static str],
    rule: fn(i64) -> Status,
    /// The value the fix sets.
    good: i64,
    why: &'static str,
}

fn exactly<const N: i64>(v: i64) -> Status {
    if v == N {
        Status::Pass
    } else {
        Status::Fail
    }
}

fn warn_unless<const N: i64>(v: i64) -> Status {
    if v == N {
        Status::Pass
    } else {
        Status::Warn
    }
}

fn at_least_one(v: i64) -> Status {
    if v >= 1 {
        Status::Pass
    } else {
        Status::Fail
    }
}

const SYSCTLS: &[Sysctl] = &[
    Sysctl {
        id: "kernel.rp_filter",
        title: "reverse-path filtering",
        keys: &["net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter"],
        rule: |v| match v {
            1 => Status::Pass,
            2 => Status::Warn,
            _ => Status::Fail,
        },
        good: 1,
        why: "drops packets with spoofed source addresses that could not have arrived on that interface",
    },
    Sysctl {
        id: "kernel.accept_redirects",
        title: "ICMP redirects ignored",
        keys: &[
            "net/ipv4/conf/all/accept_redirects",
            "net/ipv4/conf/default/accept_redirects",
            "net/ipv6/conf/all/accept_redirects",
            "net/ipv6/conf/default/accept_redirects",
        ],
        rule: exactly::<0>,
        good: 0,
        why: "a forged redirect can reroute this host's traffic through an attacker",
    },
    Sysctl {
        id: "kernel.send_redirects",
        title: "ICMP redirects not sent",
        keys: &["net/ipv4/conf/all/send_redirects", "net/ipv4/conf/default/send_redirects"],
        rule: warn_unless::<0>,
        good: 0,
        why: "a server is not a router; sending redirects leaks routing and helps spoofing",
    },
    Sysctl {
        id: "kernel.accept_source_route",
        title: "source routing refused",
        keys: &[
            "net/ipv4/conf/all/accept_source_route",
            "net/ipv4/conf/default/accept_source_route",
            "net/ipv6/conf/all/accept_source_route",
            "net/ipv6/conf/default/accept_source_route",
        ],
        rule: exactly::<0>,
        good: 0,
        why: "source-routed packets let a sender choose the path and bypass filtering",
    },
    Sysctl {
        id: "kernel.log_martians",
        title: "martian packets logged",
        keys: &["net/ipv4/conf/all/log_martians", "net/ipv4/conf/default/log_martians"],
        rule: warn_unless::<1>,
        good: 1,
        why: "impossible source addresses are a sign of spoofing; logging them shows attacks",
    },
    Sysctl {
        id: "kernel.icmp_echo_ignore_broadcasts",
        title: "broadcast pings ignored",
        keys: &["net/ipv4/icmp_echo_ignore_broadcasts"],
        rule: exactly::<1>,
        good: 1,
        why: "answering broadcast pings makes the host a smurf-attack amplifier",
    },
    Sysctl {
        id: "kernel.tcp_syncookies",
        title: "SYN cookies",
        keys: &["net/ipv4/tcp_syncookies"],
        rule: at_least_one,
        good: 1,
        why: "without SYN cookies a SYN flood fills the backlog and refuses real clients",
    },
    Sysctl {
        id: "kernel.tcp_max_syn_backlog",
        title: "SYN backlog of 2048 or more",
        keys: &["net/ipv4/tcp_max_syn_backlog"],
        rule: |v| if v >= 2048 { Status::Pass } else { Status::Warn },
        good: 4096,
        why: "a short backlog overflows under a burst of new connections",
    },
    Sysctl {
        id: "kernel.tcp_synack_retries",
        title: "SYN-ACK retries 3 or fewer",
        keys: &["net/ipv4/tcp_synack_retries"],
        rule: |v| if v <= 3 { Status::Pass } else { Status::Warn },
        good: 2,
        why: "each retry keeps a half-open connection alive longer during a SYN flood",
    },
    Sysctl {
        id: "kernel.tcp_rfc1337",
        title: "TIME-WAIT assassination protection (RFC 1337)",
        keys: &["net/ipv4/tcp_rfc1337"],
        rule: warn_unless::<1>,
        good: 1,
        why: "stray RSTs must not kill connections in TIME-WAIT",
    },
    Sysctl {
        id: "kernel.unprivileged_bpf_disabled",
        title: "unprivileged BPF off",
        keys: &["kernel/unprivileged_bpf_disabled"],
        rule: at_least_one,
        good: 1,
        why: "unprivileged BPF has been the way in for many kernel exploits",
    },
    Sysctl {
        id: "kernel.kptr_restrict",
        title: "kernel pointers hidden",
        keys: &["kernel/kptr_restrict"],
        rule: at_least_one,
        good: 1,
        why: "kernel addresses in /proc defeat KASLR for a local attacker",
    },
    Sysctl {
        id: "kernel.yama.ptrace_scope",
        title: "ptrace restricted (Yama)",
        keys: &["kernel/yama/ptrace_scope"],
        rule: at_least_one,
        good: 1,
        why: "any process could otherwise read the memory (and secrets) of others of the same user",
    },
];

pub(super) fn checks(ctx: &Context) -> Vec<Check> {
    SYSCTLS.iter().map(|s| one(ctx, s)).collect()
}

fn one(ctx: &Context, s: &Sysctl) -> Check {
    let names: Vec<String> = s.keys.iter().map(|k| k.replace('/', ".")).collect();
    let fix = format!(
        "sysctl -w {}; persist it: printf '{}\\n' > /etc/sysctl.d/90-spinforge-{}.conf",
        names
            .iter()
            .map(|n| format!("{n}={}", s.good))
            .collect::<Vec<_>>()
            .join(" "),
        names
            .iter()
            .map(|n| format!("{n} = {}", s.good))
            .collect::<Vec<_>>()
            .join("\\n"),
        s.id.trim_start_matches("kernel.")
    );
    let ipv6_off = !ctx.path("/proc/sys/net/ipv6").exists();
    let mut worst = Status::Pass;
    let mut found = Vec::new();
    for (key, name) in s.keys.iter().zip(&names) {
        if ipv6_off && key.starts_with("net/ipv6/") {
            continue;
        }
        let path = ctx.path("/proc/sys").join(key);
        let value = match std::fs::read_to_string(&path) {
            Ok(text) => match text.trim().parse::<i64>() {
                Ok(v) => v,
                Err(_) => {
                    let detail =
                        format!("{} holds `{}`, not a number", path.display(), text.trim());
                    return verdict(s.id, s.title, s.why, Status::Unknown, detail, fix);
                }
            },
            Err(e) => {
                let detail = format!("cannot read {}: {e}", path.display());
                return verdict(s.id, s.title, s.why, Status::Unknown, detail, fix);
            }
        };
        let status = (s.rule)(value);
        if rank(status) > rank(worst) {
            worst = status;
        }
        found.push(format!("{name} = {value}"));
    }
    verdict(s.id, s.title, s.why, worst, found.join(", "), fix)
}

/// Worse verdicts rank higher.
fn rank(status: Status) -> u8 {
    match status {
        Status::Pass => 0,
        Status::Warn => 1,
        Status::Unknown => 2,
        Status::Fail => 3,
    }
}
