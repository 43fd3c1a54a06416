//! Benchmark driver for the WAF (bench/waf/run.sh runs it).
//!
//! `waf_bench replay REQUESTS.jsonl OUT.tsv` feeds every request of the
//! file through the engine at the default site settings (paranoia 1,
//! block, threshold 5) and writes `id<TAB>blocked<TAB>rules` per request.
//!
//! `waf_bench cost` times `Waf::inspect` for a typical GET, a 2 KiB form
//! POST and a 64 KiB JSON POST and prints median and p99 per request, and
//! the memory the compiled rule set and one site's settings take.

use std::io::{BufRead, Write};
use std::time::Instant;

use shield::waf::{Decision, RequestView, SiteWafConfig, Waf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("replay") if args.len() == 4 => replay(&args[2], &args[3]),
        Some("cost") => cost(),
        Some("explain") => explain(),
        _ => {
            eprintln!("usage: waf_bench replay REQUESTS.jsonl OUT.tsv | waf_bench cost");
            std::process::exit(2);
        }
    }
}

/// The headers every replayed request carries, as in run.sh's client.
const UA: &[u8] = b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

fn replay(input: &str, output: &str) -> Result<(), Box<dyn std::error::Error>> {
    let waf = Waf::new()?;
    let site = SiteWafConfig::default();
    let mut out = std::io::BufWriter::new(std::fs::File::create(output)?);
    for line in std::io::BufReader::new(std::fs::File::open(input)?).lines() {
        let req: serde_json::Value = serde_json::from_str(&line?)?;
        let ctype = req["ctype"].as_str().map(str::as_bytes);
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("Host", b"localhost"),
            ("User-Agent", UA),
            ("Accept", b"text/html,application/json;q=0.9,*/*;q=0.8"),
        ];
        if let Some(ct) = ctype {
            headers.push(("Content-Type", ct));
        }
        let view = RequestView {
            method: req["method"].as_str().unwrap_or("GET"),
            target: req["target"].as_str().unwrap_or("/"),
            headers: &headers,
            body: req["body"].as_str().unwrap_or("").as_bytes(),
        };
        let v = waf.inspect(&view, &site);
        let rules: Vec<String> = v.rule_ids().iter().map(u32::to_string).collect();
        writeln!(
            out,
            "{}\t{}\t{}",
            req["id"],
            u8::from(v.decision == Decision::Block),
            rules.join(",")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Reads one value per line from stdin, places it in a query argument
/// and prints the rules that match, with fingerprints: for reading
/// results by hand.
fn explain() -> Result<(), Box<dyn std::error::Error>> {
    let waf = Waf::new()?;
    let site = SiteWafConfig::default();
    for line in std::io::stdin().lines() {
        let line = line?;
        let target = format!(
            "/?q={}",
            percent_encoding::utf8_percent_encode(&line, percent_encoding::NON_ALPHANUMERIC)
        );
        let v = waf.inspect(
            &RequestView {
                method: "GET",
                target: &target,
                headers: &[],
                body: b"",
            },
            &site,
        );
        let why: Vec<String> = v
            .matches
            .iter()
            .map(|m| {
                format!(
                    "{}{}",
                    m.rule.id,
                    m.detail
                        .as_deref()
                        .map(|d| format!("[{d}]"))
                        .unwrap_or_default()
                )
            })
            .collect();
        println!(
            "{}\t{}\t{}",
            u8::from(v.decision == Decision::Block),
            why.join(","),
            line
        );
    }
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn time(label: &str, waf: &Waf, site: &SiteWafConfig, view: &RequestView<'_>, iters: usize) {
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters / 10 {
        std::hint::black_box(waf.inspect(view, site));
    }
    for _ in 0..iters {
        let t = Instant::now();
        std::hint::black_box(waf.inspect(view, site));
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let median = samples[samples.len() / 2] as f64 / 1000.0;
    let p99 = samples[samples.len() * 99 / 100] as f64 / 1000.0;
    println!("{label}\tmedian_us={median:.2}\tp99_us={p99:.2}\titers={iters}");
}

fn cost() -> Result<(), Box<dyn std::error::Error>> {
    let before = rss_kib();
    let waf = Waf::new()?;
    let site = SiteWafConfig::default();
    // Compile lazily-built regex caches before measuring memory.
    let warm = RequestView {
        method: "GET",
        target: "/?q=%3Cscript%3E1'or'1'='1",
        headers: &[],
        body: b"",
    };
    waf.inspect(&warm, &site);
    let after = rss_kib();
    println!("ruleset_rss_kib\t{}", after.saturating_sub(before));
    println!(
        "site_config_bytes\t{}",
        std::mem::size_of::<SiteWafConfig>()
            + site.headers.capacity() * std::mem::size_of::<String>()
            + site.exclusions.capacity() * std::mem::size_of::<shield::waf::Exclusion>()
    );

    let get_headers: &[(&str, &[u8])] = &[
        ("Host", b"shop.example.com"),
        ("User-Agent", UA),
        ("Accept", b"text/html,application/xhtml+xml"),
        ("Referer", b"https://shop.example.com/category/shoes?page=2"),
        (
            "Cookie",
            b"session=9f8e7d6c5b4a39281706; theme=dark; consent=yes",
        ),
    ];
    let get = RequestView {
        method: "GET",
        target: "/products/search?q=running+shoes&size=42&colour=blue&sort=price_asc&page=3",
        headers: get_headers,
        body: b"",
    };
    time("get", &waf, &site, &get, 200_000);

    let mut form =
        String::from("name=Se%C3%A1n+O%27Brien&email=sean%40example.ie&subject=Order+question");
    form.push_str("&message=");
    while form.len() < 2048 {
        form.push_str("Hi%2C+my+order+hasn%27t+arrived+yet+%26+it%27s+been+a+week.+");
    }
    let form_headers: &[(&str, &[u8])] = &[
        ("Host", b"shop.example.com"),
        ("User-Agent", UA),
        ("Content-Type", b"application/x-www-form-urlencoded"),
    ];
    let form_req = RequestView {
        method: "POST",
        target: "/contact",
        headers: form_headers,
        body: form.as_bytes(),
    };
    time("form_2k", &waf, &site, &form_req, 50_000);

    let mut items = Vec::new();
    let mut json = String::new();
    for i in 0.. {
        items.push(serde_json::json!({
            "sku": format!("SKU-{i:05}"),
            "name": "Levi's 501® Original Fit Jeans — 32\"/34\"",
            "note": "Leave it at the door; ring twice & wait, it's fine.",
            "qty": i % 5,
        }));
        json =
            serde_json::json!({ "order": { "items": items, "customer": "O'Brien" } }).to_string();
        if json.len() >= 64 * 1024 {
            break;
        }
    }
    let json_headers: &[(&str, &[u8])] = &[
        ("Host", b"api.example.com"),
        ("User-Agent", UA),
        ("Content-Type", b"application/json"),
    ];
    let json_req = RequestView {
        method: "POST",
        target: "/api/orders",
        headers: json_headers,
        body: json.as_bytes(),
    };
    time("json_64k", &waf, &site, &json_req, 2_000);
    Ok(())
}
