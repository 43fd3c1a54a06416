#!/usr/bin/env python3
"""Turns bench/spinlets.sh's raw results into its section of
docs/BENCHMARKS.md.

  spinlet_report.py RESULTS_DIR DOC

The section is written between the bench-spinlets markers (appended, with
its heading, if they are absent); the rest of the document is left as it
is. The numbers are copied from the tools' output, never adjusted.
"""

import json
import os
import re
import sys

START = "<!-- bench-spinlets:start -->"
END = "<!-- bench-spinlets:end -->"
HEADING = "## Process sites (spinlets)"

COLD_TARGET_MS = 20.0
HUB_TARGET_MB = 80.0  # read as MiB, like the 60 MB target above

TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def read_pairs(path):
    pairs = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    pairs[key] = value
    return pairs


def to_ms(text):
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()
    return float(number) * TIME_UNITS[unit]


def parse_wrk(text):
    found = {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": to_ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),
        "p99": to_ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)),
        "errors": 0,
    }
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non:
        found["errors"] += int(non.group(1))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        found["errors"] += sum(int(n) for n in sock.groups())
    return found


def mib(kib):
    return int(kib) / 1024


def cold_part(results, meta):
    rows = []
    for name in ("rust", "python"):
        path = os.path.join(results, f"coldstart-{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
    if not rows:
        return ["Not run this time (`bash bench/spinlets.sh coldstart`)."]

    def ms(value):
        return f"{value:.1f} ms"

    first = rows[0]
    lines = [
        "Time from the first request to a stopped app until the first byte of "
        "its answer through the edge, against the same app started directly. "
        f"{first['runs']} measured runs per app (after one unrecorded warm-up "
        "round), each a pair: *direct* execs the manifest's command itself "
        "(same folder, same environment as SpinForge's spawner, PORT set to a "
        f"free port) and polls every {first['poll_ms']:.0f} ms until `GET /` "
        "answers, timed from spawn to the first byte; *via SpinForge* stops the "
        "app with `POST /api/v1/sites/D/restart`, waits until the status says "
        "`stopped`, then times `GET /` through the edge from `connect` to the "
        "first byte. Each run checks that a new app process answered. The pair's "
        "order alternates; both sides pause "
        f"{first['settle_ms']:.0f} ms before starting. *Overhead* is via "
        "SpinForge minus direct, per pair; its median and p90 are of those "
        "differences (nearest-rank p90).",
        "",
        "| App | Command | Direct median | Direct p90 | Via SpinForge median "
        "| Via SpinForge p90 | Overhead median | Overhead p90 | Overhead min–max "
        "| Difference of the medians |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        o = r["overhead"]
        lines.append(
            f"| {r['label']} | `{' '.join(r['argv'])}` | {ms(r['direct']['median'])} "
            f"| {ms(r['direct']['p90'])} | {ms(r['spinforge']['median'])} "
            f"| {ms(r['spinforge']['p90'])} | **{ms(o['median'])}** | {ms(o['p90'])} "
            f"| {o['min']:.1f}–{o['max']:.1f} ms | {ms(r['median_difference_ms'])} |"
        )
    verdicts = []
    for r in rows:
        median = r["overhead"]["median"]
        met = "met" if median <= COLD_TARGET_MS else "**not met**"
        verdicts.append(f"{r['label']} {met} ({median:.1f} ms)")
    lines += [
        "",
        f"Target: overhead ≤ {COLD_TARGET_MS:.0f} ms at the median — "
        + "; ".join(verdicts)
        + ". A negative overhead means the direct start happened to be slower in "
        "that pair: on a busy host the spread of the start-up times is larger "
        "than SpinForge's share, so read the overhead together with its p90 "
        "and the difference of the medians. The rust-app has no manifest (its "
        "single executable is detected), "
        "so SpinForge waits for its port to accept; the python-app's manifest "
        "has `health_path = \"/health\"`, so SpinForge also waits for one "
        "`GET /health` before it forwards the request, and that round trip "
        "counts as overhead. Other work used "
        f"{meta.get('COLD_OTHER', '?')}% of the host during the cold starts; "
        f"load average before: {meta.get('COLD_LOAD_BEFORE', '?')}, after: "
        f"{meta.get('COLD_LOAD_AFTER', '?')}.",
    ]
    return lines


def throughput_part(results, meta):
    runs = {}
    for key in ("direct", "edge"):
        for n in (1, 2):
            path = os.path.join(results, f"wrk-{key}-{n}.txt")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                runs[(key, n)] = parse_wrk(f.read())
            with open(os.path.join(results, f"wrk-{key}-{n}.other")) as f:
                runs[(key, n)]["other"] = int(f.read().strip())
    if not runs:
        return ["Not run this time (`bash bench/spinlets.sh throughput`)."]

    lines = [
        "The examples/node-app (keep-alive HTTP, `console.log` per request, which "
        "SpinForge captures into the app log) deployed as a process site and "
        "running; the *same process* is loaded once through the edge and once "
        "on its own loopback port (taken from the status API), with the same "
        f"`{meta.get('WRK_ARGS', '')}` after an unrecorded "
        f"{meta.get('WARMUP', '')} warm-up, in two alternating rounds. wrk, "
        "serve and node share the host's CPUs.",
        "",
        "| Round | Path | Requests/s | p50 | p99 | Errors | Edge/direct req/s "
        "| Edge/direct p99 | Other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in (1, 2):
        for key in ("direct", "edge"):
            r = runs.get((key, n))
            if not r:
                continue
            ratio_rps = ratio_p99 = ""
            d = runs.get(("direct", n))
            if key == "edge" and d:
                ratio_rps = f"{r['rps'] / d['rps']:.2f}x"
                ratio_p99 = f"{r['p99'] / d['p99']:.2f}x"
            label = "node directly" if key == "direct" else "through the SpinForge edge"
            lines.append(
                f"| {n} | {label} | {r['rps']:,.0f} | {r['p50']:.2f} ms | {r['p99']:.2f} ms "
                f"| {r['errors']} | {ratio_rps} | {ratio_p99} | {r['other']}% |"
            )
    lines += [
        "",
        f"Load average before: {meta.get('TP_LOAD_BEFORE', '?')}; after: "
        f"{meta.get('TP_LOAD_AFTER', '?')}. *Other load* is the share of the "
        "host's CPU used during the run by processes outside the benchmark.",
    ]
    return lines


def rss_part(results):
    m = read_pairs(os.path.join(results, "rss.txt"))
    if "AWAKE_RSS_KB" not in m:
        return ["Not run this time (`bash bench/spinlets.sh rss`)."]
    sites = int(m["SITES"])
    awake = int(m["AWAKE"])
    lines = [
        f"{sites:,} process sites, each with the same tiny app (a stdlib "
        "`http.server` in `python3 app.py`, no health path, "
        f"`idle_timeout_secs = {m['IDLE']}`), created through the API by "
        f"{m['CLIENTS']} concurrent clients: {m['DEPLOY_OK']} deployed in "
        f"{float(m['DEPLOY_SECONDS']):.0f} s ({m['DEPLOY_RATE']} sites/s). Every "
        "deploy starts the app once to check it and leaves it running until "
        f"its idle timeout, so the deploys pause while {m['MAX_RUNNING']} or more "
        f"apps run (peak seen: {m['DEPLOY_PEAK_APPS']}). After those stopped, "
        f"{awake} sites spread over the range were woken with one request each "
        f"through the edge (4 at a time: {float(m['AWAKE_WAKE_SECONDS']):.1f} s, "
        f"median {m['AWAKE_WAKE_MEDIAN_MS']} ms per cold request) and measured at "
        "once. Then serve was restarted (stopping all apps; none outlived it) and "
        "the same was done again. *VmRSS* / *VmHWM* are of the `spinforge serve` "
        "process (`/proc/PID/status`); the apps' columns sum `VmRSS` and `Pss` "
        "(`smaps_rollup`, shared pages split between the processes) over the "
        "serve's app processes.",
        "",
    ]
    checkpoints = m.get("DEPLOY_RSS_CHECKPOINTS", "").split()
    if checkpoints:
        lines += [
            "serve's VmRSS during the deploys (after N deploys): "
            + ", ".join(
                f"{int(n):,}: {mib(kib):.0f} MiB"
                for n, kib in (c.split(":") for c in checkpoints)
            )
            + ".",
            "",
        ]
    lines += [
        "| Moment | Apps running | serve VmRSS | serve VmHWM | Apps' RSS, total | "
        "Apps' PSS, total |",
        "|---|---:|---:|---:|---:|---:|",
        f"| fresh serve, no sites | 0 | {mib(m['RSS_EMPTY_KB']):.1f} MiB "
        f"| {mib(m['HWM_EMPTY_KB']):.1f} MiB | | |",
        f"| right after the {sites:,} deploys | {m['DEPLOYED_APPS']} "
        f"| {mib(m['RSS_DEPLOYED_KB']):.1f} MiB | {mib(m['HWM_DEPLOYED_KB']):.1f} MiB "
        f"| {mib(m['DEPLOYED_APPS_RSS_KB']):.0f} MiB | {mib(m['DEPLOYED_APPS_PSS_KB']):.0f} MiB |",
        f"| deploy-started apps stopped (idle) | {m['IDLE_APPS']} "
        f"| {mib(m['RSS_IDLE_KB']):.1f} MiB | {mib(m['HWM_IDLE_KB']):.1f} MiB | | |",
        f"| **{awake} woken** | {m['AWAKE_APPS']} | **{mib(m['AWAKE_RSS_KB']):.1f} MiB** "
        f"| {mib(m['AWAKE_HWM_KB']):.1f} MiB | {mib(m['AWAKE_APPS_RSS_KB']):.0f} MiB "
        f"| {mib(m['AWAKE_APPS_PSS_KB']):.0f} MiB |",
        f"| after a restart of serve, idle | {m['RESTART_APPS']} "
        f"| {mib(m['RSS_RESTART_KB']):.1f} MiB | {mib(m['HWM_RESTART_KB']):.1f} MiB | | |",
        f"| **after the restart, {awake} woken** | {m['AWAKE2_APPS']} "
        f"| **{mib(m['AWAKE2_RSS_KB']):.1f} MiB** | {mib(m['AWAKE2_HWM_KB']):.1f} MiB "
        f"| {mib(m['AWAKE2_APPS_RSS_KB']):.0f} MiB | {mib(m['AWAKE2_APPS_PSS_KB']):.0f} MiB |",
        "",
    ]
    worst = max(mib(m["AWAKE_RSS_KB"]), mib(m["AWAKE2_RSS_KB"]))
    met = "met" if worst < HUB_TARGET_MB else "**not met**"
    per_app = int(m["AWAKE_APPS_RSS_KB"]) / max(1, int(m["AWAKE_APPS"])) / 1024
    lines.append(
        f"Target \"hub under {HUB_TARGET_MB:.0f} MB\" (read as MiB) with {sites:,} "
        f"process sites and {awake} running: {met} (serve at "
        f"{mib(m['AWAKE_RSS_KB']):.1f} MiB after the deploys, "
        f"{mib(m['AWAKE2_RSS_KB']):.1f} MiB after a restart). The {awake} apps "
        f"themselves hold {mib(m['AWAKE_APPS_RSS_KB']):.0f} MiB RSS in total "
        f"(about {per_app:.1f} MiB each; {mib(m['AWAKE_APPS_PSS_KB']):.0f} MiB PSS), "
        "which the target does not count. With the sites registered, serve has "
        f"{m['RESTART_THREADS']} threads and {m['RESTART_FDS']} open file "
        f"descriptors when idle, {m['AWAKE2_FDS']} with {awake} apps running. "
        f"The restart took {float(m['RESTART_SECONDS']):.1f} s to a ready API. "
        f"The data directory holds {mib(m['DATA_DIR_KB']):.0f} MiB. Load average "
        f"before: {m['RSS_LOAD_BEFORE']}; after: {m['RSS_LOAD_AFTER']}."
    )
    return lines


def section(results):
    meta = read_pairs(os.path.join(results, "meta.txt"))
    minutes = int(meta.get("ELAPSED_SECONDS", "0")) / 60
    changed = meta.get("DIRTY", "").split()
    dirty = (
        " plus uncommitted changes to " + ", ".join(f"`{c}`" for c in changed)
        if changed
        else ", no uncommitted changes to the product"
    )
    lines = [
        f"Measured {meta['DATE']} with `{meta['COMMAND']}` (commit "
        f"`{meta['COMMIT']}`{dirty}); the whole run took {minutes:.0f} min.",
        "",
        f"- Host: {meta['NPROC']} CPUs (`nproc`), {meta['CPU']}, "
        f"{int(meta['MEM_TOTAL_KB']) / 1024**2:.0f} GiB RAM, kernel {meta['KERNEL']}",
        f"- Tools: {meta['RUSTC']} (`rustc -O` for the rust-app), {meta['PYTHON']}, "
        f"node {meta['NODE']}, wrk {meta['WRK']}",
        f"- Load average (1, 5, 15 min) before the script: {meta['LOAD_BEFORE']}; "
        f"after: {meta.get('LOAD_AFTER', '?')}",
        "- Everything on 127.0.0.1; `spinforge serve` with `SPINFORGE_LOG=warn,spinlet=info` "
        "(no per-request logging) and "
        "its default spawner (plain child processes, no sandbox yet); apps get "
        "PATH with the real `python3` first, so no version-manager shim is timed.",
        "",
        "### 1. Cold-start overhead",
        "",
        *cold_part(results, meta),
        "",
        "### 2. Throughput through the edge against the app directly",
        "",
        *throughput_part(results, meta),
        "",
        f"### 3. Memory with many process sites",
        "",
        *rss_part(results),
    ]
    return "\n".join(lines)


def replace_section(doc, body):
    text = ""
    if os.path.exists(doc):
        with open(doc) as f:
            text = f.read()
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    text = f"{head}{START}\n{body}\n{END}{tail}"
    tmp = doc + ".spinlets.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, doc)


def main():
    results, doc = sys.argv[1:3]
    body = section(results)
    replace_section(doc, body)
    print(body)


if __name__ == "__main__":
    main()
