#!/usr/bin/env python3
"""Turns run.sh's raw results into the markdown of docs/BENCHMARKS.md.

  report.py throughput RESULTS_DIR DOC   wrk outputs -> the bench section
  report.py rss RESULTS_FILE DOC         KEY=VALUE lines -> the RSS section

Each section is written between its own pair of markers; the rest of the
document (the hand-written analysis) is left as it is. The numbers are
copied from the tools' output, never adjusted.
"""

import os
import re
import sys

SECTIONS = {
    "throughput": ("<!-- bench:start -->", "<!-- bench:end -->"),
    "rss": ("<!-- bench-rss:start -->", "<!-- bench-rss:end -->"),
}

SKELETON = """# Benchmarks

SpinForge's edge next to nginx, on one machine, over loopback.

## Throughput and latency

{throughput_start}
{throughput_end}

## Memory with 10,000 sites

{rss_start}
{rss_end}
"""

# (key, scenario label, server label); the pairs are compared row by row.
RUNS = [
    ("direct", "1. upstream, direct", "nginx upstream (1 worker)"),
    ("sf-proxy", "2. reverse proxy", "SpinForge edge"),
    ("nginx-proxy", "3. reverse proxy", "nginx"),
    ("sf-1k", "4. static 1 KiB", "SpinForge edge"),
    ("nginx-1k", "4. static 1 KiB", "nginx"),
    ("sf-1m", "5. static 1 MiB", "SpinForge edge"),
    ("nginx-1m", "5. static 1 MiB", "nginx"),
]
PAIRS = {"sf-proxy": "nginx-proxy", "sf-1k": "nginx-1k", "sf-1m": "nginx-1m"}

TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def to_ms(text):
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()
    return float(number) * TIME_UNITS[unit]


def to_bytes(text):
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]?B)", text).groups()
    return float(number) * SIZE_UNITS[unit]


def parse_wrk(text):
    """Requests/s, p50 and p99 (ms), bytes/s and error counts from the
    output of `wrk --latency`."""
    found = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": to_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),
        "p99": to_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)),
        "bps": to_bytes(re.search(r"Transfer/sec:\s+(\S+)", text).group(1)),
        "non2xx": 0,
        "socket_errors": 0,
    }
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non:
        found["non2xx"] = int(non.group(1))
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if sock:
        found["socket_errors"] = sum(int(n) for n in sock.groups())
    return found


def fmt_rate(bps):
    if bps >= 1024**3:
        return f"{bps / 1024**3:.2f} GiB/s"
    return f"{bps / 1024**2:.1f} MiB/s"


def throughput_section(results_dir):
    meta = read_pairs(os.path.join(results_dir, "meta.txt"))
    runs = {}
    for key, _, _ in RUNS:
        with open(os.path.join(results_dir, key + ".txt")) as f:
            runs[key] = parse_wrk(f.read())
        with open(os.path.join(results_dir, key + ".other")) as f:
            share, attempt = f.read().split()
            runs[key]["other"] = int(share)
            runs[key]["attempt"] = int(attempt)

    lines = [
        f"Measured {meta['DATE']} with `{meta['COMMAND']}`, built from commit "
        f"`{meta['COMMIT']}` (plus any uncommitted edits in the tree).",
        "",
        f"- Host: {meta['NPROC']} CPUs (`nproc`), {meta['CPU']}, "
        f"kernel {meta['KERNEL']}",
        f"- Tools: {meta['NGINX_VERSION']}, wrk {meta['WRK_VERSION']}, "
        f"{meta['RUSTC']}",
        f"- Load: `{meta['WRK_ARGS']}` for every run, after an unrecorded "
        f"{meta['WARMUP']} warm-up; wrk runs on the same host, so it shares "
        "the CPUs with the servers.",
        f"- Workers: SpinForge's tokio runtime has {meta['SF_WORKERS']} worker "
        f"threads (its default, one per CPU); the compared nginx has "
        f"`worker_processes {meta['NGINX_WORKERS']}`; the upstream nginx has "
        "`worker_processes 1` and returns a fixed 100-byte body.",
        f"- Load average (1, 5, 15 min) before the runs: {meta['LOAD_BEFORE']}; "
        f"after: {meta['LOAD_AFTER']} (the runs themselves raise it).",
        "- Logging: off on both sides (`SPINFORGE_LOG=warn`, nginx "
        "`access_log off`).",
        "- nginx proxies with `proxy_http_version 1.1`, "
        '`proxy_set_header Connection ""`, an upstream block with '
        "`keepalive 64`, and sets the same forwarding headers the edge sets "
        "(X-Forwarded-For/-Proto/-Host, X-Request-Id). nginx serves static "
        "files with `sendfile on`. Files are random bytes (`.bin`), so "
        "neither side compresses.",
        "",
        "| Scenario | Server | Requests/s | p50 | p99 | Transfer | "
        "SpinForge/nginx req/s | SpinForge/nginx p99 | Other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, scenario, server in RUNS:
        r = runs[key]
        ratio_rps = ratio_p99 = ""
        if key in PAIRS:
            other = runs[PAIRS[key]]
            ratio_rps = f"{r['rps'] / other['rps']:.2f}x"
            ratio_p99 = f"{r['p99'] / other['p99']:.2f}x"
        lines.append(
            f"| {scenario} | {server} | {r['rps']:,.0f} | {r['p50']:.2f} ms | "
            f"{r['p99']:.2f} ms | {fmt_rate(r['bps'])} | {ratio_rps} | {ratio_p99} | "
            f"{r['other']}%{' (2nd try)' if r['attempt'] > 1 else ''} |"
        )
    lines += [
        "",
        "A req/s ratio below 1 means SpinForge serves fewer requests than "
        "nginx; a p99 ratio above 1 means its slowest 1% are slower. "
        "*Other load* is the share of the host's CPU used during the run by "
        "processes outside the benchmark (neither wrk nor the servers); "
        "a run with more than a few percent there is skewed against the "
        "server measured. A run with over 10% was repeated once and the try "
        "with less other load kept.",
    ]
    bad = [
        f"{key} ({runs[key]['non2xx']} non-2xx/3xx, "
        f"{runs[key]['socket_errors']} socket errors)"
        for key, _, _ in RUNS
        if runs[key]["non2xx"] or runs[key]["socket_errors"]
    ]
    if bad:
        lines += ["", "Errors reported by wrk: " + "; ".join(bad) + "."]
    return "\n".join(lines)


def read_pairs(path):
    pairs = {}
    with open(path) as f:
        for line in f:
            if "=" in line:
                key, value = line.rstrip("\n").split("=", 1)
                pairs[key] = value
    return pairs


def mib(kib):
    return int(kib) / 1024


def rss_section(results_file):
    m = read_pairs(results_file)
    after = mib(m["RSS_RESTART_KB"])
    after_mb = int(m["RSS_RESTART_KB"]) * 1024 / 1e6
    verdict = "within" if after_mb <= 60.0 else "over"
    lines = [
        f"Measured {m['DATE']} with `{m['COMMAND']}` (commit `{m['COMMIT']}`), "
        f"{m['NPROC']} CPUs, kernel {m['KERNEL']}.",
        "",
        f"{int(m['SITES']):,} static sites, each with a one-file release "
        f"(one `index.html` of about 80 bytes), created through the API by "
        f"{m['CLIENTS']} concurrent clients in {float(m['DEPLOY_SECONDS']):.0f} s "
        f"({int(m['SITES']) / float(m['DEPLOY_SECONDS']):.0f} sites/s; each "
        "site is two API calls: create, then upload; the rate went from "
        f"{m['DEPLOY_RATE_FIRST']} sites/s over the first {m['DEPLOY_STEP']} "
        f"sites to {m['DEPLOY_RATE_LAST']} sites/s over the last "
        f"{m['DEPLOY_STEP']}). `VmRSS` and `VmHWM` "
        "come from `/proc/PID/status` of the `spinforge serve` process; "
        "`SPINFORGE_LOG=warn`.",
        "",
        "| Moment | VmRSS | VmHWM (peak) |",
        "|---|---:|---:|",
        f"| fresh server, no sites | {mib(m['RSS_EMPTY_KB']):.1f} MiB | "
        f"{mib(m['HWM_EMPTY_KB']):.1f} MiB |",
        f"| right after the {int(m['SITES']):,} deploys | "
        f"{mib(m['RSS_DEPLOYED_KB']):.1f} MiB | {mib(m['HWM_DEPLOYED_KB']):.1f} MiB |",
        f"| after a restart (route table loaded from the store), idle | "
        f"{after:.1f} MiB | {mib(m['HWM_RESTART_KB']):.1f} MiB |",
        f"| after the restart and {m['PROBES']} requests to as many sites | "
        f"{mib(m['RSS_PROBED_KB']):.1f} MiB | {mib(m['HWM_PROBED_KB']):.1f} MiB |",
        "",
        f"After the restart, VmRSS is {after_mb:.1f} MB: {verdict} the 60 MB "
        "target (MB = 10⁶ bytes; the table is in MiB). The restart took "
        f"{float(m['RESTART_SECONDS']):.1f} s from start to a ready API; "
        f"{m['PROBES_OK']}/{m['PROBES']} probe requests through the edge "
        f"got 200. The data directory holds {mib(m['DATA_DIR_KB']):.0f} MiB "
        f"in {int(m['DATA_DIR_ENTRIES']):,} files and directories.",
    ]
    return "\n".join(lines)


def replace_section(doc, section, body):
    start, end = SECTIONS[section]
    if os.path.exists(doc):
        with open(doc) as f:
            text = f.read()
    else:
        text = SKELETON.format(
            throughput_start=SECTIONS["throughput"][0],
            throughput_end=SECTIONS["throughput"][1],
            rss_start=SECTIONS["rss"][0],
            rss_end=SECTIONS["rss"][1],
        )
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    text = f"{head}{start}\n{body}\n{end}{tail}"
    tmp = doc + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, doc)


def main():
    section, source, doc = sys.argv[1:4]
    if section == "throughput":
        body = throughput_section(source)
    elif section == "rss":
        body = rss_section(source)
    else:
        sys.exit(f"unknown section {section!r}")
    replace_section(doc, section, body)
    print(body)


if __name__ == "__main__":
    main()
