//! Costs of secrets (issue 8), printed as markdown:
//! - decrypting all of one site's 100 secrets, as a spinlet start does,
//!   with data keys cached (the usual case) and unwrapped afresh;
//! - a backup of a data directory with 1,000 sites (a small release and
//!   one secret each): time and size.
//!
//! Run with `bench/secrets.sh`.

use secrecy::SecretString;
use secrets::{Secrets, SecretsConfig};
use std::path::Path;
use std::time::{Duration, Instant};

const SECRETS_PER_SITE: usize = 100;
const SITES: usize = 1000;
const ROUNDS: usize = 200;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    store::SqliteStore::open(&data).await?.close().await;
    add_sites(&data, SITES).await?;
    let secrets = Secrets::open(&data, &SecretsConfig::default()).await?;

    for i in 0..SECRETS_PER_SITE {
        let value = SecretString::from(format!("value-{i:03}-{}", "x".repeat(40)));
        secrets.set(1, &format!("S_{i:03}"), &value, None).await?;
    }
    let warm = time_rounds(|| async {
        let env = secrets.site_env(1).await.expect("env");
        assert_eq!(env.len(), SECRETS_PER_SITE);
    })
    .await;
    let cold = time_rounds(|| async {
        secrets.clear_key_cache();
        let env = secrets.site_env(1).await.expect("env");
        assert_eq!(env.len(), SECRETS_PER_SITE);
    })
    .await;

    for site in 2..=SITES as i64 {
        let value = SecretString::from(format!("site-{site}-secret-value"));
        secrets.set(site, "API_TOKEN", &value, None).await?;
    }
    secrets.close().await;
    let out = dir.path().join("backup.sfb");
    let passphrase = SecretString::from("benchmark passphrase 1234".to_owned());
    let started = Instant::now();
    let summary =
        secrets::backup::create(&data, &SecretsConfig::default(), &out, &passphrase).await?;
    let backup_time = started.elapsed();
    let restored = dir.path().join("restored");
    let started = Instant::now();
    let checked =
        secrets::backup::restore(&out, &restored, &SecretsConfig::default(), &passphrase).await?;
    let restore_time = started.elapsed();

    println!("| measure | median | p99 | target |");
    println!("|---|---|---|---|");
    println!(
        "| decrypt {SECRETS_PER_SITE} secrets, data keys cached | {} | {} | < 1 ms |",
        fmt(warm.0),
        fmt(warm.1)
    );
    println!(
        "| decrypt {SECRETS_PER_SITE} secrets, data keys unwrapped | {} | {} | < 1 ms |",
        fmt(cold.0),
        fmt(cold.1)
    );
    println!();
    println!("| backup of {SITES} sites | value |");
    println!("|---|---|");
    println!(
        "| database size | {} KiB |",
        dir_size(&data.join(store::DB_FILE)) / 1024
    );
    println!("| files in the archive | {} |", summary.files);
    println!("| backup time | {:.2} s |", backup_time.as_secs_f64());
    println!("| backup size | {} KiB |", summary.bytes / 1024);
    println!(
        "| restore time (with all {checked} secrets decrypted) | {:.2} s |",
        restore_time.as_secs_f64()
    );
    Ok(())
}

async fn add_sites(data: &Path, count: usize) -> Result<(), Box<dyn std::error::Error>> {
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join(store::DB_FILE).display()))
            .await?;
    let mut tx = pool.begin().await?;
    for i in 1..=count {
        sqlx::query("INSERT INTO sites (domain, kind, created_at) VALUES (?, 'static', 0)")
            .bind(format!("site{i}.example.com"))
            .execute(&mut *tx)
            .await?;
        let release = data.join(format!("sites/{i}/releases/r1"));
        std::fs::create_dir_all(&release)?;
        std::fs::write(
            release.join("index.html"),
            format!(
                "<!doctype html><title>site {i}</title><p>{}</p>",
                "hello ".repeat(150)
            ),
        )?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

async fn time_rounds<F, Fut>(mut round: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        round().await;
        times.push(started.elapsed());
    }
    times.sort();
    (times[ROUNDS / 2], times[ROUNDS * 99 / 100])
}

fn fmt(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn dir_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
