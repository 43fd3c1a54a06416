#!/usr/bin/env python3
"""Compares two WAFs' verdicts on the same requests and prints markdown.

    report.py REQUESTS.jsonl SPINFORGE.tsv CRS.tsv
"""

import collections
import json
import sys


def verdicts(path):
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            out[int(parts[0])] = (parts[1] == "1", parts[2] if len(parts) > 2 else "")
    return out


def main():
    reqs = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
    sf, crs = verdicts(sys.argv[2]), verdicts(sys.argv[3])
    by = collections.defaultdict(lambda: [0, 0, 0])  # total, sf blocked, crs blocked
    for r in reqs:
        for key in [(r["class"], "all"), (r["class"], r["placement"])]:
            row = by[key]
            row[0] += 1
            row[1] += sf[r["id"]][0]
            row[2] += crs[r["id"]][0]

    pct = lambda n, d: f"{100.0 * n / d:.2f}%" if d else "-"
    print("| class | placement | requests | SpinForge PL1 | nginx + ModSecurity + CRS PL1 |")
    print("|---|---|---:|---:|---:|")
    for cls in ["sqli", "xss", "lfi", "cmdi", "benign"]:
        for placement in ["all", "query", "form", "json"]:
            n, a, b = by[(cls, placement)]
            label = "detected" if cls != "benign" else "false positives"
            print(f"| {cls} ({label}) | {placement} | {n} | {a} ({pct(a, n)}) | {b} ({pct(b, n)}) |")

    kinds = collections.defaultdict(lambda: [0, 0, 0])
    for r in reqs:
        if r["class"] == "benign":
            k = kinds[r["kind"]]
            k[0] += 1
            k[1] += sf[r["id"]][0]
            k[2] += crs[r["id"]][0]
    print("\nFalse positives by benign kind (requests blocked / sent):\n")
    print("| kind | requests | SpinForge | CRS |")
    print("|---|---:|---:|---:|")
    for kind, (n, a, b) in sorted(kinds.items()):
        print(f"| {kind} | {n} | {a} | {b} |")

    # Attacks only one engine caught, to read by hand, never to tune on.
    for name, mine, other in [("missed by SpinForge, caught by CRS", sf, crs),
                              ("missed by CRS, caught by SpinForge", crs, sf)]:
        rows = [r for r in reqs if r["class"] != "benign" and not mine[r["id"]][0] and other[r["id"]][0]]
        print(f"\n{len(rows)} attack requests {name}.")
    fps = [r for r in reqs if r["class"] == "benign" and sf[r["id"]][0]]
    print(f"\n{len(fps)} benign requests blocked by SpinForge.", file=sys.stderr)


if __name__ == "__main__":
    main()
