//! The audit log's benchmark: append throughput with batching (fsync on
//! and off), query latency over a large log with its indexes, and the
//! speed of a full verification. Everything runs in a temporary data
//! directory; nothing touches the network.
//!
//! cargo run --release -p audit --example audit_bench -- [EVENTS]
//!
//! EVENTS (default 1,000,000) is the size of the queried log.

use audit::{AuditConfig, AuditEvent, AuditQuery, Auditor, Outcome, TypeFilter};
use std::time::{Duration, Instant};

const TYPES: [&str; 10] = [
    "auth.login",
    "auth.failed",
    "auth.locked",
    "auth.refresh",
    "site.deploy",
    "site.delete",
    "site.rollback",
    "apikey.create",
    "user.update",
    "permission.denied",
];
/// 2030-01-01: after any real event, since the log keeps time from
/// going back along the chain.
const BASE_US: i64 = 1_893_456_000_000_000;

fn event(i: u64) -> AuditEvent {
    let mut event = AuditEvent::new(TYPES[(i % 10) as usize])
        .user((i % 500) as i64)
        .result(match i % 7 {
            0 => Outcome::Failure,
            1 => Outcome::Denied,
            _ => Outcome::Success,
        })
        .resource(format!("site:s{}.example.com", i % 2000))
        // Not a multiple of the type cycle: every customer has every type.
        .customer(format!("c{}", (i / 10) % 50))
        .client_ip(std::net::IpAddr::from([10, 0, (i % 256) as u8, 7]))
        .user_agent("Mozilla/5.0 (X11; Linux x86_64) bench")
        .request_id(format!("{i:032x}"))
        .meta("release", format!("r{i}"))
        .meta("bytes", i * 31 % 100_000);
    event.time_us = BASE_US + i as i64 * 1000;
    event
}

async fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    store::SqliteStore::open(dir.path())
        .await
        .expect("store")
        .close()
        .await;
    dir
}

/// Appends `n` events from `producers` tasks; returns events per second
/// until the last one is committed.
async fn append(n: u64, producers: u64, config: AuditConfig) -> (f64, tempfile::TempDir) {
    let dir = data_dir().await;
    let auditor = Auditor::start(dir.path(), config).await.expect("start");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let auditor = auditor.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                auditor.submit_wait(event(i)).await.expect("queue");
                i += producers;
            }
        }));
    }
    for task in tasks {
        task.await.expect("producer");
    }
    auditor.checkpoint().await.expect("checkpoint");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    auditor.shutdown().await;
    (rate, dir)
}

/// Sequential `record` calls, each waiting for its own commit: the
/// latency a fail-closed request pays.
async fn record_latency(n: usize, fsync: bool) -> (Duration, Duration) {
    let dir = data_dir().await;
    let config = AuditConfig {
        fsync,
        ..AuditConfig::default()
    };
    let auditor = Auditor::start(dir.path(), config).await.expect("start");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        auditor.record(event(i as u64)).await.expect("record");
        times.push(started.elapsed());
    }
    auditor.shutdown().await;
    times.sort();
    (times[n / 2], times[n * 99 / 100])
}

fn percentile(times: &mut [Duration], p: usize) -> Duration {
    times.sort();
    times[(times.len() * p / 100).min(times.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let events: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);

    println!("### Append throughput (200,000 events, 4 producers, batches up to 1,024)\n");
    println!("| fsync | events/s |\n|---|---:|");
    for fsync in [true, false] {
        let config = AuditConfig {
            fsync,
            ..AuditConfig::default()
        };
        let (rate, _dir) = append(200_000, 4, config).await;
        println!(
            "| {} | {:.0} |",
            if fsync { "on (FULL)" } else { "off (NORMAL)" },
            rate
        );
    }

    println!("\n### One `record` at a time (1,000 calls, each waits for its commit)\n");
    println!("| fsync | p50 | p99 |\n|---|---:|---:|");
    for fsync in [true, false] {
        let (p50, p99) = record_latency(1000, fsync).await;
        println!(
            "| {} | {} | {} |",
            if fsync { "on" } else { "off" },
            ms(p50),
            ms(p99)
        );
    }

    // The big log is written without fsync: it is the reads that are
    // measured here, and the write rate is reported above.
    let config = AuditConfig {
        fsync: false,
        ..AuditConfig::default()
    };
    let started = Instant::now();
    let (_, dir) = append(events, 4, config).await;
    let fill = started.elapsed();
    let auditor = Auditor::start(dir.path(), AuditConfig::default())
        .await
        .expect("start");
    let reader = auditor.reader();

    println!("\n### Queries over {events} events (page of 100, newest first; 200 runs each)\n");
    println!("| query | p50 | p99 | max |\n|---|---:|---:|---:|");
    let classes: Vec<(&str, MakeQuery)> = vec![
        ("no filter", Box::new(|_| base())),
        (
            "type prefix `auth.`",
            Box::new(|_| AuditQuery {
                kind: Some(TypeFilter::parse("auth.").expect("type")),
                ..base()
            }),
        ),
        (
            "exact type + user",
            Box::new(|i| AuditQuery {
                kind: Some(TypeFilter::parse(TYPES[(i % 10) as usize]).expect("type")),
                actor_user: Some(((i * 37) % 500) as i64),
                ..base()
            }),
        ),
        (
            "user",
            Box::new(|i| AuditQuery {
                actor_user: Some(((i * 13) % 500) as i64),
                ..base()
            }),
        ),
        (
            "resource",
            Box::new(|i| AuditQuery {
                resource: Some(format!("site:s{}.example.com", (i * 17) % 2000)),
                ..base()
            }),
        ),
        (
            "result `denied`",
            Box::new(|_| AuditQuery {
                result: Some(Outcome::Denied),
                ..base()
            }),
        ),
        (
            "customer + type prefix",
            Box::new(|i| AuditQuery {
                customer: Some(format!("c{}", i % 50)),
                kind: Some(TypeFilter::parse("site.").expect("type")),
                ..base()
            }),
        ),
        (
            "time window (1 h) + prefix",
            Box::new(move |i| {
                let start = BASE_US + ((i * 7919) % events) as i64 * 1000;
                AuditQuery {
                    since_us: Some(start),
                    until_us: Some(start + 3_600_000_000),
                    kind: Some(TypeFilter::parse("auth.").expect("type")),
                    ..base()
                }
            }),
        ),
        (
            "deep page (cursor in the middle)",
            Box::new(move |i| AuditQuery {
                before: Some(((i * 7919) % events) as i64 + 2),
                kind: Some(TypeFilter::parse("auth.failed").expect("type")),
                ..base()
            }),
        ),
    ];
    for (name, make) in &classes {
        let mut times = Vec::new();
        for i in 0..200u64 {
            let query = make(i);
            let started = Instant::now();
            let page = reader.query(&query).await.expect("query");
            times.push(started.elapsed());
            std::hint::black_box(page);
        }
        let max = *times.iter().max().expect("runs");
        let p50 = percentile(&mut times, 50);
        let p99 = percentile(&mut times, 99);
        println!("| {name} | {} | {} | {} |", ms(p50), ms(p99), ms(max));
    }
    auditor.shutdown().await;

    let started = Instant::now();
    let report = audit::verify(dir.path(), None).await.expect("verify");
    let took = started.elapsed();
    assert_eq!(report.fault, None);
    println!("\n### Full verification\n");
    println!(
        "{} rows and {} checkpoints in {:.2} s: {:.0} rows/s (the log was filled in {:.1} s)",
        report.rows,
        report.checkpoints,
        took.as_secs_f64(),
        report.rows as f64 / took.as_secs_f64(),
        fill.as_secs_f64()
    );
}

/// Builds the query of run `i` of one class.
type MakeQuery = Box<dyn Fn(u64) -> AuditQuery>;

fn base() -> AuditQuery {
    AuditQuery {
        limit: 100,
        ..Default::default()
    }
}
