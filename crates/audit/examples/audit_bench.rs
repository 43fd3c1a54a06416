//! The audit log's benchmark: append throughput with batching (fsync on
//! and off), query latency over a large log with its indexes, and the
//! speed of a full verification. Everything runs in a temporary data
//! directory; nothing touches the network.
//!
//! cargo run --release -p audit --example audit_bench -- [EVENTS]
//!
//! EVENTS (default 1,000,000) is the size of the queried log. The append
//! section also takes the write path apart (MAC, personal-field sealing,
//! SQLite settings, statement shape, indexes) to show where time goes;
//! `bench/audit.sh` runs it all.

use audit::chain::{ChainKey, Row, GENESIS};
use audit::{AuditConfig, AuditEvent, AuditQuery, Auditor, Outcome, TypeFilter};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite};
use std::time::{Duration, Instant};

/// Events per append measurement.
const APPEND_EVENTS: u64 = 200_000;

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

/// A bench event with no acting user: no subject, so no field sealing.
fn anonymous_event(i: u64) -> AuditEvent {
    let mut e = event(i);
    e.actor.user_id = None;
    e
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

/// CPU time this process has used so far (user + system, all threads),
/// from /proc: comparable across runs on a shared host, where the wall
/// clock mostly measures the other processes.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 here
    // (counted from 0 after the name);
    // the kernel counts them in 1/100 s on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Events per CPU-second of the last [`append_with`] call.
static CPU_RATE: std::sync::Mutex<f64> = std::sync::Mutex::new(0.0);

/// Appends `n` events from `producers` tasks; returns events per second
/// until the last one is committed.
async fn append(n: u64, producers: u64, config: AuditConfig) -> (f64, tempfile::TempDir) {
    append_with(n, producers, config, event).await
}

async fn append_with(
    n: u64,
    producers: u64,
    config: AuditConfig,
    make: MakeEvent,
) -> (f64, tempfile::TempDir) {
    let dir = data_dir().await;
    let auditor = Auditor::start(dir.path(), config).await.expect("start");
    let started = Instant::now();
    let cpu_started = cpu_time();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let auditor = auditor.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < n {
                auditor.submit_wait(make(i)).await.expect("queue");
                i += producers;
            }
        }));
    }
    for task in tasks {
        task.await.expect("producer");
    }
    auditor.checkpoint().await.expect("checkpoint");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu_started).as_secs_f64().max(0.01);
    *CPU_RATE.lock().expect("cpu rate") = n as f64 / cpu;
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

/// One way of inserting precomputed rows straight through sqlx.
struct RawVariant {
    name: &'static str,
    full_sync: bool,
    cache_mib: u32,
    rows_per_insert: usize,
    rows_per_txn: usize,
    /// Filter indexes dropped before inserting.
    dropped: &'static [&'static str],
    /// `wal_autocheckpoint` in pages; `None` keeps SQLite's 1,000.
    autocheckpoint: Option<u32>,
}

const ALL_FILTER_INDEXES: &[&str] = &[
    "audit_events_kind",
    "audit_events_category",
    "audit_events_actor",
    "audit_events_resource",
    "audit_events_customer",
    "audit_events_time",
];

/// The rows the writer would store for `n` bench events (no sealing),
/// with their MACs; also returns the MAC rate in rows/s.
fn chained_rows(n: u64) -> (Vec<Row>, f64) {
    let key = ChainKey::new(&[9; 32]);
    let mut rows: Vec<Row> = (0..n)
        .map(|i| {
            let e = event(i);
            Row {
                seq: i as i64 + 1,
                time_us: e.time_us,
                kind: e.kind.clone(),
                actor_user: e.actor.user_id,
                actor_role: None,
                actor_key: None,
                client_ip: e.client_ip.map(|ip| ip.to_string()),
                user_agent: e.user_agent.clone(),
                resource: e.resource.clone(),
                action: e.kind.rsplit('.').next().map(str::to_owned),
                result: e.result.as_str().to_owned(),
                request_id: e.request_id.clone(),
                session_id: None,
                customer: e.customer.clone(),
                metadata: serde_json::Value::Object(e.metadata.clone()).to_string(),
                prev_mac: Vec::new(),
                mac: Vec::new(),
            }
        })
        .collect();
    let started = Instant::now();
    let mut prev = GENESIS.to_vec();
    for row in &mut rows {
        row.prev_mac = prev;
        row.mac = key.mac(&row.prev_mac, row).to_vec();
        prev = row.mac.clone();
    }
    (rows, n as f64 / started.elapsed().as_secs_f64())
}

const COLUMNS: &str = "seq, time, kind, actor_user, actor_role, actor_key, client_ip, \
    user_agent, resource, action, result, request_id, session_id, customer, metadata, \
    prev_mac, mac";

/// Inserts `rows` into a fresh store as `variant` says; rows/s.
async fn raw_insert(rows: &[Row], variant: &RawVariant) -> f64 {
    let dir = data_dir().await;
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join(store::DB_FILE))
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if variant.full_sync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        .pragma("cache_size", format!("-{}", variant.cache_mib * 1024));
    let options = match variant.autocheckpoint {
        Some(pages) => options.pragma("wal_autocheckpoint", pages.to_string()),
        None => options,
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("open");
    for index in variant.dropped {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX IF EXISTS {index}")))
            .execute(&pool)
            .await
            .expect("drop index");
    }
    let started = Instant::now();
    for batch in rows.chunks(variant.rows_per_txn) {
        let mut tx = pool.begin().await.expect("begin");
        for chunk in batch.chunks(variant.rows_per_insert) {
            let mut insert =
                QueryBuilder::<Sqlite>::new(format!("INSERT INTO audit_events ({COLUMNS}) "));
            insert.push_values(chunk, |mut b, row| {
                b.push_bind(row.seq)
                    .push_bind(row.time_us)
                    .push_bind(&row.kind)
                    .push_bind(row.actor_user)
                    .push_bind(&row.actor_role)
                    .push_bind(&row.actor_key)
                    .push_bind(&row.client_ip)
                    .push_bind(&row.user_agent)
                    .push_bind(&row.resource)
                    .push_bind(&row.action)
                    .push_bind(&row.result)
                    .push_bind(&row.request_id)
                    .push_bind(&row.session_id)
                    .push_bind(&row.customer)
                    .push_bind(&row.metadata)
                    .push_bind(&row.prev_mac)
                    .push_bind(&row.mac);
            });
            insert.build().execute(&mut *tx).await.expect("insert");
        }
        tx.commit().await.expect("commit");
    }
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    pool.close().await;
    rate
}

async fn where_append_time_goes() {
    println!("\n### Where the append time goes ({APPEND_EVENTS} rows)\n");
    let (rows, mac_rate) = chained_rows(APPEND_EVENTS);
    println!("HMAC chain alone: {mac_rate:.0} rows/s.\n");
    println!("Raw sqlx inserts of the same precomputed rows (no writer task, no sealing):\n");
    println!("| variant | rows/s |\n|---|---:|");
    let writer = RawVariant {
        name: "as the writer before: FULL, 2 MiB cache, 64 rows/INSERT, 1,024 rows/txn",
        full_sync: true,
        cache_mib: 2,
        rows_per_insert: 64,
        rows_per_txn: 1024,
        dropped: &[],
        autocheckpoint: None,
    };
    let variants = [
        RawVariant {
            name: "… NORMAL instead of FULL",
            full_sync: false,
            ..writer
        },
        RawVariant {
            name: "… FULL, 32 MiB cache",
            cache_mib: 32,
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 32 MiB cache",
            full_sync: false,
            cache_mib: 32,
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 32 MiB, 1 row/INSERT (prepared once, reused)",
            full_sync: false,
            cache_mib: 32,
            rows_per_insert: 1,
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 32 MiB, 4,096 rows/txn",
            full_sync: false,
            cache_mib: 32,
            rows_per_txn: 4096,
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 32 MiB, without the 6 filter indexes",
            full_sync: false,
            cache_mib: 32,
            dropped: ALL_FILTER_INDEXES,
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 32 MiB, checkpoint every 16,384 WAL pages",
            full_sync: false,
            cache_mib: 32,
            autocheckpoint: Some(16_384),
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 32 MiB, 8,192 rows/txn",
            full_sync: false,
            cache_mib: 32,
            rows_per_txn: 8192,
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 128 MiB cache",
            full_sync: false,
            cache_mib: 128,
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 32 MiB, without the kind index",
            full_sync: false,
            cache_mib: 32,
            dropped: &["audit_events_kind"],
            ..writer
        },
        RawVariant {
            name: "… NORMAL, 128 MiB, 8,192 rows/txn, checkpoint every 16,384 pages",
            full_sync: false,
            cache_mib: 128,
            rows_per_txn: 8192,
            autocheckpoint: Some(16_384),
            ..writer
        },
        RawVariant {
            name: "… FULL, 128 MiB, 8,192 rows/txn, checkpoint every 16,384 pages",
            cache_mib: 128,
            rows_per_txn: 8192,
            autocheckpoint: Some(16_384),
            ..writer
        },
    ];
    println!(
        "| {} | {:.0} |",
        writer.name,
        raw_insert(&rows, &writer).await
    );
    for variant in &variants {
        println!(
            "| {} | {:.0} |",
            variant.name,
            raw_insert(&rows, variant).await
        );
    }
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
    // `raw` runs only the write-path breakdown (for quick experiments).
    let section = std::env::args().nth(2).unwrap_or_default();
    if section == "raw" {
        where_append_time_goes().await;
        return;
    }

    println!("### Append throughput ({APPEND_EVENTS} events, 4 producers, the real writer)\n");
    println!(
        "| settings | fsync on (FULL) | fsync off (NORMAL) | per CPU-second, on / off |\n\
         |---|---:|---:|---:|"
    );
    let defaults = AuditConfig::default();
    let cases: [(&str, AuditConfig, MakeEvent); 3] = [
        (
            "old defaults: batches up to 1,024, 32 MiB cache",
            AuditConfig {
                batch_max: 1024,
                cache_mib: 32,
                ..defaults.clone()
            },
            event,
        ),
        (
            "default now: batches up to 8,192, 128 MiB writer cache",
            defaults.clone(),
            event,
        ),
        (
            "default now, events naming no user (nothing to seal)",
            defaults.clone(),
            anonymous_event,
        ),
    ];
    for (name, config, make) in cases {
        let mut rates = Vec::new();
        let mut cpu_rates = Vec::new();
        for fsync in [true, false] {
            let config = AuditConfig {
                fsync,
                ..config.clone()
            };
            rates.push(append_with(APPEND_EVENTS, 4, config, make).await.0);
            cpu_rates.push(*CPU_RATE.lock().expect("cpu rate"));
        }
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} / {:.0} |",
            rates[0], rates[1], cpu_rates[0], cpu_rates[1]
        );
    }
    if section == "append" {
        return;
    }
    if section != "noraw" {
        where_append_time_goes().await;
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

/// Builds bench event `i`.
type MakeEvent = fn(u64) -> AuditEvent;

/// Builds the query of run `i` of one class.
type MakeQuery = Box<dyn Fn(u64) -> AuditQuery>;

fn base() -> AuditQuery {
    AuditQuery {
        limit: 100,
        ..Default::default()
    }
}
