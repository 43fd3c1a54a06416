//! Measures what issue 5 asks for: access-token verification per request,
//! full bearer authentication (token plus session lookup), logins per
//! second with the Argon2id parameters in use, and the memory that
//! concurrent logins take. Run it with `bash bench/identity.sh`.

use identity::{ClientInfo, Identity, IdentityConfig, UserSpec};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Role, SqliteStore, UserId};

/// The allocator `spinforge serve` runs on: the login memory measured
/// here depends on it (see `hash_into` in src/password.rs).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PASSWORD: &str = "correct horse battery staple";

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteStore::open(dir.path()).await?);
    let secrets = secrets::Secrets::open(dir.path(), &secrets::SecretsConfig::default()).await?;
    let mut config = IdentityConfig::default();
    // Every attempt counts against its network and the account before
    // its password is checked, and a login with others in flight from
    // its network waits (250 ms for the 4th, up to 8 s). This measures
    // hashing and sessions: each parallel login below comes from a
    // network of its own, and the account's lockout is lifted.
    config.lockout.max_failures = 1_000_000;
    let id = Identity::new(store, config.clone(), secrets).await?;
    id.create_user(UserSpec {
        email: "bench@example.com".into(),
        password: PASSWORD.into(),
        role: Role::Developer,
        customer: Some("bench".into()),
        display_name: None,
    })
    .await?;
    let client = ClientInfo::default();

    // 1. Signature and claims only.
    let key = identity::jwt::generate_key()?;
    let ring = identity::jwt::KeyRing::new(&[key], &config.issuer, &config.audience);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let claims = identity::jwt::claims_for(
        UserId(1),
        "session",
        &config.issuer,
        &config.audience,
        now,
        Duration::from_secs(900),
    );
    let token = ring.sign(&claims).ok_or("sign")?;
    let mut verify = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let started = Instant::now();
        ring.verify(&token)?;
        verify.push(started.elapsed());
    }

    // 2. What a request pays: token plus the session and user lookup.
    let (_, pair) = id
        .login("bench@example.com", PASSWORD.into(), None, &client)
        .await?;
    let mut authenticate = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let started = Instant::now();
        id.authenticate(&pair.access_token).await?;
        authenticate.push(started.elapsed());
    }

    println!("| measurement | median | p99 |");
    println!("|---|---|---|");
    println!(
        "| access-token verification (EdDSA, claims) | {:.1} µs | {:.1} µs |",
        percentile(&mut verify, 0.5).as_secs_f64() * 1e6,
        percentile(&mut verify, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| bearer authentication (token + session lookup) | {:.1} µs | {:.1} µs |",
        percentile(&mut authenticate, 0.5).as_secs_f64() * 1e6,
        percentile(&mut authenticate, 0.99).as_secs_f64() * 1e6
    );

    // 3. Logins per second, and the memory they take.
    println!();
    println!("| concurrent logins | logins/s | RSS after (MiB) | peak RSS (MiB) |");
    println!("|---|---|---|---|");
    let before = rss_kib("VmRSS:");
    for concurrency in [1usize, 4, 16, 64] {
        let started = Instant::now();
        let mut done = 0usize;
        while started.elapsed() < Duration::from_secs(4) {
            let mut tasks = Vec::new();
            for task in 0..concurrency {
                let id = id.clone();
                let client =
                    ClientInfo::new(Some(Ipv4Addr::new(10, 0, task as u8, 1).into()), None);
                tasks.push(tokio::spawn(async move {
                    id.login("bench@example.com", PASSWORD.into(), None, &client)
                        .await
                }));
            }
            for task in tasks {
                task.await??;
                done += 1;
            }
        }
        let rate = done as f64 / started.elapsed().as_secs_f64();
        println!(
            "| {concurrency} | {rate:.1} | {:.0} | {:.0} |",
            rss_kib("VmRSS:") as f64 / 1024.0,
            rss_kib("VmHWM:") as f64 / 1024.0
        );
    }
    println!();
    println!(
        "RSS before logins: {:.0} MiB; the semaphore allows 4 hashes at once.",
        before as f64 / 1024.0
    );
    Ok(())
}
