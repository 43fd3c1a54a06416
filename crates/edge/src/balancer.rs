//! Balancer sites: a pool of upstreams, picked round robin or by least
//! connections, with active health checks that take a failed upstream out
//! and put it back once it answers again.
//!
//! The pool is part of the route table, so a change of upstreams builds a
//! new pool; its checker task ends when the pool is dropped.

use crate::app::LeaseGuard;
use crate::upstream::{Upstream, UpstreamPolicy};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    LeastConn,
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// `None`: an upstream is healthy iff it accepts a connection.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Member {
    pub upstream: Upstream,
    healthy: AtomicBool,
    active: AtomicUsize,
}

impl Member {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }
}

#[derive(Debug)]
pub struct Pool {
    site: Arc<str>,
    members: Vec<Arc<Member>>,
    strategy: Strategy,
    next: AtomicUsize,
}

/// Counts one request against a member until dropped. A member the edge
/// cannot connect to is taken out at once instead of at the next check;
/// the member's own error responses never take it out, so a client cannot
/// knock members out by asking for a URL that fails.
pub struct MemberLease {
    member: Arc<Member>,
    site: Arc<str>,
}

impl LeaseGuard for MemberLease {
    fn record_status(&self, _status: u16) {}

    fn unreachable(&self) {
        if self.member.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(site = %self.site, upstream = %self.member.upstream.authority,
                "upstream unreachable; taken out");
        }
    }
}

impl Drop for MemberLease {
    fn drop(&mut self) {
        self.member.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// Builds the pool and starts its health checker. All members start
    /// healthy, so a new pool serves at once. Call within a tokio runtime.
    pub fn start(
        site: &str,
        upstreams: Vec<Upstream>,
        strategy: Strategy,
        check: HealthCheck,
        policy: Arc<UpstreamPolicy>,
    ) -> Arc<Pool> {
        let members = upstreams
            .into_iter()
            .map(|upstream| {
                Arc::new(Member {
                    upstream,
                    healthy: AtomicBool::new(true),
                    active: AtomicUsize::new(0),
                })
            })
            .collect();
        let pool = Arc::new(Pool {
            site: site.into(),
            members,
            strategy,
            next: AtomicUsize::new(0),
        });
        tokio::spawn(check_loop(Arc::downgrade(&pool), check, policy));
        pool
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// Picks a healthy member, or `None` when every member is down.
    pub fn pick(&self) -> Option<(Upstream, MemberLease)> {
        let healthy = || self.members.iter().filter(|m| m.is_healthy());
        let member = match self.strategy {
            Strategy::RoundRobin => {
                let count = self.members.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..count)
                    .map(|i| &self.members[(start + i) % count])
                    .find(|m| m.is_healthy())
            }
            Strategy::LeastConn => healthy().min_by_key(|m| m.active.load(Ordering::Acquire)),
        }?;
        member.active.fetch_add(1, Ordering::AcqRel);
        let lease = MemberLease {
            member: member.clone(),
            site: self.site.clone(),
        };
        Some((member.upstream.clone(), lease))
    }
}

async fn check_loop(pool: Weak<Pool>, check: HealthCheck, policy: Arc<UpstreamPolicy>) {
    loop {
        tokio::time::sleep(check.interval).await;
        let Some(pool) = pool.upgrade() else { return };
        for member in &pool.members {
            let healthy = probe(&member.upstream, &check, &policy).await;
            let was = member.healthy.swap(healthy, Ordering::AcqRel);
            if was != healthy {
                let upstream = &member.upstream.authority;
                if healthy {
                    tracing::info!(site = %pool.site, %upstream, "upstream healthy again; back in");
                } else {
                    tracing::warn!(site = %pool.site, %upstream, "upstream failed its health check");
                }
            }
        }
    }
}

/// One health probe. Only addresses the upstream policy permits are tried,
/// so a health check cannot be turned into a way around it.
async fn probe(upstream: &Upstream, check: &HealthCheck, policy: &UpstreamPolicy) -> bool {
    let attempt = async {
        let addrs = tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
            .await
            .ok()?;
        let addr: SocketAddr = addrs.into_iter().find(|a| policy.permits(a.ip()))?;
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let Some(path) = &check.path else {
            return Some(true);
        };
        let request = format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: spinforge-health\r\n\r\n",
            upstream.base_path, upstream.authority
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        let code: u16 = std::str::from_utf8(&head[9..12]).ok()?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    matches!(
        tokio::time::timeout(check.timeout, attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(strategy: Strategy, n: usize) -> Arc<Pool> {
        let upstreams = (0..n)
            .map(|i| Upstream::parse(&format!("http://10.0.0.{i}:80")).expect("url"))
            .collect();
        let check = HealthCheck {
            path: None,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
        };
        Pool::start(
            "b.test",
            upstreams,
            strategy,
            check,
            Arc::new(UpstreamPolicy::default()),
        )
    }

    fn host(picked: &(Upstream, MemberLease)) -> String {
        picked.0.host.clone()
    }

    #[tokio::test]
    async fn round_robin_visits_each_healthy_member_in_turn() {
        let pool = pool(Strategy::RoundRobin, 3);
        let seen: Vec<String> = (0..6).map(|_| host(&pool.pick().expect("pick"))).collect();
        assert_eq!(
            seen,
            ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.0", "10.0.0.1", "10.0.0.2"]
        );
        pool.members[1].healthy.store(false, Ordering::Release);
        let seen: Vec<String> = (0..4).map(|_| host(&pool.pick().expect("pick"))).collect();
        assert!(!seen.contains(&"10.0.0.1".to_string()), "{seen:?}");
    }

    #[tokio::test]
    async fn least_conn_prefers_the_idlest_member() {
        let pool = pool(Strategy::LeastConn, 2);
        let first = pool.pick().expect("pick");
        let second = pool.pick().expect("pick");
        assert_ne!(host(&first), host(&second), "the busy one is skipped");
        drop(first);
        let third = pool.pick().expect("pick");
        assert_eq!(host(&third), "10.0.0.0", "the freed member is idlest again");
    }

    #[tokio::test]
    async fn an_unreachable_member_is_taken_out_but_its_own_errors_do_not() {
        let pool = pool(Strategy::RoundRobin, 1);
        let picked = pool.pick().expect("pick");
        picked.1.record_status(502);
        picked.1.record_status(504);
        drop(picked);
        let picked = pool.pick().expect("a member's own 5xx keeps it in");
        picked.1.unreachable();
        drop(picked);
        assert!(pool.pick().is_none());
    }
}
