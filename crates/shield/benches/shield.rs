//! Micro-benchmarks of the shield's hot paths, with no harness beyond
//! `std::time`: rate-limit decisions per second for one key and for 1M
//! distinct keys, the memory 1M keys take, and the cost of a ban check
//! against a table of 100k bans.
//!
//!     cargo bench -p shield --bench shield
//!
//! Prints `KEY=VALUE` lines that bench/shield.sh copies into
//! docs/BENCHMARKS.md. Memory is the process's resident set before and
//! after, read from /proc/self/statm, so it includes the allocator's
//! overhead, as a real server would see it.

use shield::bans::{Ban, BanTable};
use shield::client_ip::ForwardedHeader;
use shield::rate::{KeyedLimiter, Policy};
use shield::{ClientIpResolver, IpKey, ShieldClock};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn key(n: u32) -> IpKey {
    // Spread over IPv4 and IPv6 like real traffic would be.
    if n % 2 == 0 {
        IpKey::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), 64)
    } else {
        let v6 = Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(n) << 64));
        IpKey::new(IpAddr::V6(v6), 64)
    }
}

fn per_second(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

fn main() {
    let clock = ShieldClock::system();
    // High enough that no decision is a refusal: we measure the check.
    let policy = Policy::per_minute(u32::MAX / 2);

    let one = KeyedLimiter::<IpKey>::new(policy, 0.1, clock.clone());
    let k = key(7);
    let rounds = 5_000_000u64;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(one.check(black_box(&k), false));
    }
    println!(
        "RATE_ONE_KEY_PER_SEC={:.0}",
        per_second(rounds, started.elapsed())
    );

    let keys: Vec<IpKey> = (0..1_000_000).map(key).collect();
    let before = rss_kib();
    let many = KeyedLimiter::<IpKey>::new(policy, 0.1, clock.clone());
    let started = Instant::now();
    for k in &keys {
        black_box(many.check(k, false));
    }
    let first_pass = started.elapsed();
    let after = rss_kib();
    let started = Instant::now();
    for k in &keys {
        black_box(many.check(k, false));
    }
    let second_pass = started.elapsed();
    println!(
        "RATE_1M_KEYS_INSERT_PER_SEC={:.0}",
        per_second(keys.len() as u64, first_pass)
    );
    println!(
        "RATE_1M_KEYS_PER_SEC={:.0}",
        per_second(keys.len() as u64, second_pass)
    );
    println!("RATE_1M_KEYS_MEMORY_KIB={}", after.saturating_sub(before));
    println!("RATE_KEYS={}", many.len());
    drop(many);

    // Loaded at once, as a restart does: one ban at a time copies the
    // table each time, which is fine for bans made by hand but not for
    // building 100k of them here.
    let table = BanTable::new(clock.clone());
    let resolver = ClientIpResolver::new(Vec::new(), ForwardedHeader::XForwardedFor, 64);
    let now = clock.unix_now();
    let bans = (0..100_000u32)
        .map(|n| Ban {
            ip: key(n * 2 + 1_000_001).to_string(),
            reason: "bench".into(),
            created_at: now,
            expires_at: now + 3600,
        })
        .collect();
    table.load(bans, &resolver);
    let probes: Vec<IpKey> = (0..1_000_000u32).map(key).collect();
    let started = Instant::now();
    let mut hits = 0u64;
    for p in &probes {
        hits += u64::from(table.is_banned(black_box(p)));
    }
    let miss = started.elapsed();
    let banned: Vec<IpKey> = (0..100_000u32).map(|n| key(n * 2 + 1_000_001)).collect();
    let started = Instant::now();
    for _ in 0..10 {
        for b in &banned {
            hits += u64::from(table.is_banned(black_box(b)));
        }
    }
    let hit = started.elapsed();
    println!("BANS={}", table.len());
    println!(
        "BAN_CHECK_MISS_NS={:.1}",
        miss.as_nanos() as f64 / probes.len() as f64
    );
    println!(
        "BAN_CHECK_HIT_NS={:.1}",
        hit.as_nanos() as f64 / (banned.len() * 10) as f64
    );
    println!("BAN_HITS={hits}");
}
