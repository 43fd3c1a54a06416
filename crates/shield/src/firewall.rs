//! Optional sync of bans into an nftables set, so the kernel drops a
//! banned client before it reaches us. Off by default.
//!
//! `nft` runs with an argument vector, never through a shell, and the
//! address it receives was parsed into an [`IpKey`] first, so no text an
//! attacker controls can reach the command line. The operator creates the
//! table and sets (see docs/CONFIGURATION.md); we only add and delete
//! elements.

use crate::client_ip::IpKey;
use std::process::Command;
use std::time::Duration;

/// Where bans go: `nft ... inet <table> <set4|set6>`.
#[derive(Debug, Clone)]
pub struct Nftables {
    pub table: String,
    pub set_v4: String,
    pub set_v6: String,
}

impl Nftables {
    /// The arguments that add `key` for `ttl`.
    pub fn add_args(&self, key: &IpKey, ttl: Duration) -> Vec<String> {
        let mut args = self.element_args("add", key);
        let close = args.pop();
        args.push("timeout".into());
        args.push(format!("{}s", ttl.as_secs().max(1)));
        args.extend(close);
        args
    }

    /// The arguments that delete `key`.
    pub fn delete_args(&self, key: &IpKey) -> Vec<String> {
        self.element_args("delete", key)
    }

    fn element_args(&self, verb: &str, key: &IpKey) -> Vec<String> {
        let set = if key.is_ipv4() {
            &self.set_v4
        } else {
            &self.set_v6
        };
        [verb, "element", "inet", &self.table, set, "{"]
            .into_iter()
            .map(str::to_owned)
            .chain([key.to_string(), "}".to_owned()])
            .collect()
    }

    /// Runs `nft` with `args` on a thread of its own; failures are logged.
    pub fn run(&self, args: Vec<String>) {
        std::thread::spawn(move || match Command::new("nft").args(&args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::warn!(
                status = %out.status,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "nft refused a ban change"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot run nft"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn nft() -> Nftables {
        Nftables {
            table: "spinforge".into(),
            set_v4: "banned4".into(),
            set_v6: "banned6".into(),
        }
    }

    fn key(s: &str) -> IpKey {
        IpKey::new(s.parse::<IpAddr>().expect("ip"), 64)
    }

    #[test]
    fn ban_arguments_are_a_vector_with_the_parsed_address() {
        assert_eq!(
            nft().add_args(&key("192.0.2.1"), Duration::from_secs(3600)),
            [
                "add",
                "element",
                "inet",
                "spinforge",
                "banned4",
                "{",
                "192.0.2.1",
                "timeout",
                "3600s",
                "}"
            ]
        );
        assert_eq!(
            nft().delete_args(&key("2001:db8::9")),
            [
                "delete",
                "element",
                "inet",
                "spinforge",
                "banned6",
                "{",
                "2001:db8::/64",
                "}"
            ]
        );
    }
}
