//! `spinforge waf test`: runs the WAF locally on one request or string and
//! shows what matches and why, for tuning a site's exclusions. It needs
//! no server and reads no data directory.

use std::io::Read;

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use shield::waf::{Decision, Exclusion, Mode, RequestView, SiteWafConfig, Verdict, Waf};

use crate::cli::WafCommand;

/// Exit status when the request would be blocked (the CLI's "refused").
pub struct WouldBlock;

pub fn run(command: WafCommand) -> anyhow::Result<Result<(), WouldBlock>> {
    let WafCommand::Test {
        input,
        paranoia,
        threshold,
        exclude,
        json,
    } = command;
    let input = if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        buf
    } else {
        input.into_bytes()
    };

    let mut site = SiteWafConfig {
        mode: Mode::Block,
        paranoia,
        threshold,
        ..Default::default()
    };
    for e in &exclude {
        site.exclusions.push(parse_exclusion(e)?);
    }
    site.validate()?;

    let request = parse_input(&input)?;
    let headers = request.header_refs();
    let view = RequestView {
        method: &request.method,
        target: &request.target,
        headers: &headers,
        body: &request.body,
    };
    let waf = Waf::new().context("compiling the WAF rules")?;
    let verdict = waf.inspect(&view, &site);

    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&verdict, &site))?
        );
    } else {
        print_table(&verdict, &site);
    }
    Ok(if verdict.decision == Decision::Block {
        Err(WouldBlock)
    } else {
        Ok(())
    })
}

/// `RULE`, `RULE@/path`, `RULE:arg` or `RULE@/path:arg`.
fn parse_exclusion(s: &str) -> anyhow::Result<Exclusion> {
    let (head, arg) = match s.split_once(':') {
        Some((h, a)) => (h, Some(a.to_owned())),
        None => (s, None),
    };
    let (rule, path) = match head.split_once('@') {
        Some((r, p)) => (r, Some(p.to_owned())),
        None => (head, None),
    };
    let rule = rule.parse().with_context(|| {
        format!("--exclude {s:?}: the rule must be a number, as in 2001@/path:arg")
    })?;
    Ok(Exclusion { rule, path, arg })
}

/// A request owned by the CLI, borrowed as a [`RequestView`].
struct OwnedRequest {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl OwnedRequest {
    fn header_refs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect()
    }
}

const METHODS: &[&str] = &[
    "GET ", "POST ", "PUT ", "PATCH ", "DELETE ", "HEAD ", "OPTIONS ",
];

/// A raw HTTP/1 request if the input starts with a method and a target,
/// otherwise a string placed in the query argument `q`.
fn parse_input(input: &[u8]) -> anyhow::Result<OwnedRequest> {
    let starts_like_request = METHODS.iter().any(|m| input.starts_with(m.as_bytes()));
    if !starts_like_request {
        let value: String =
            percent_encoding::percent_encode(input, percent_encoding::NON_ALPHANUMERIC).to_string();
        return Ok(OwnedRequest {
            method: "GET".into(),
            target: format!("/?q={value}"),
            headers: Vec::new(),
            body: Vec::new(),
        });
    }

    let (head, body) = match find(input, b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| find(input, b"\n\n").map(|i| (i, 2)))
    {
        Some((i, n)) => (&input[..i], input[i + n..].to_vec()),
        None => (input, Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_owned();
    let Some(target) = parts.next().filter(|t| !t.is_empty()) else {
        bail!("the request line {request_line:?} has no target; expected e.g. \"GET /path?x=1 HTTP/1.1\"");
    };
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            bail!("header line {line:?} has no ':'");
        };
        headers.push((name.trim().to_owned(), value.trim().as_bytes().to_vec()));
    }
    Ok(OwnedRequest {
        method,
        target: target.to_owned(),
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn print_table(v: &Verdict, site: &SiteWafConfig) {
    if v.matches.is_empty() {
        println!("no rule matched at paranoia level {}", site.paranoia);
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY);
        table.set_header(["RULE", "CLASS", "SEVERITY", "PL", "WHERE", "MATCHED", "WHY"]);
        for m in &v.matches {
            let place = if m.name.is_empty() {
                m.location.to_owned()
            } else {
                format!("{}:{}", m.location, m.name)
            };
            let why = match &m.detail {
                Some(d) => format!("{} ({d})", m.rule.description),
                None => m.rule.description.to_owned(),
            };
            table.add_row([
                m.rule.id.to_string(),
                m.rule.class.to_string(),
                format!(
                    "{} (+{})",
                    m.rule.severity.as_str(),
                    m.rule.severity.score()
                ),
                m.rule.paranoia.to_string(),
                place,
                m.fragment.clone(),
                why,
            ]);
        }
        println!("{table}");
    }
    let outcome = if v.decision == Decision::Block {
        "would be blocked (403)"
    } else {
        "would pass"
    };
    println!(
        "score {} / threshold {}: {outcome}",
        v.score, site.threshold
    );
}

fn to_json(v: &Verdict, site: &SiteWafConfig) -> serde_json::Value {
    serde_json::json!({
        "blocked": v.decision == Decision::Block,
        "score": v.score,
        "threshold": site.threshold,
        "paranoia": site.paranoia,
        "class": v.class().map(|c| c.as_str()),
        "matches": v.matches.iter().map(|m| serde_json::json!({
            "rule": m.rule.id,
            "class": m.rule.class.as_str(),
            "severity": m.rule.severity.as_str(),
            "paranoia": m.rule.paranoia,
            "location": m.location,
            "name": m.name,
            "fragment": m.fragment,
            "description": m.rule.description,
            "detail": m.detail,
        })).collect::<Vec<_>>(),
    })
}
