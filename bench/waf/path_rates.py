#!/usr/bin/env python3
"""Path placement and per-class rates for the SpinForge engine alone.

    path_rates.py path REQUESTS.jsonl OUT.jsonl   # every query input as a path segment
    path_rates.py rates REQUESTS.jsonl VERDICTS.tsv

`path` turns each `/bench/search?q=INPUT` request of build_requests.py
into `/bench/item/INPUT` (same encoding), so the same inputs test path
inspection; `rates` prints blocked/total per class from a
`waf_bench replay` verdict file.
"""

import collections
import json
import sys


def path(src, dst):
    prefix = "/bench/search?q="
    n = 0
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for line in f:
            r = json.loads(line)
            if r["placement"] != "query" or not r["target"].startswith(prefix):
                continue
            q = r["target"][len(prefix):]
            if "&" in q:
                continue
            r.update(id=n, placement="path", target="/bench/item/" + q)
            out.write(json.dumps(r) + "\n")
            n += 1
    print(f"{n} path requests -> {dst}")


def rates(src, verdicts):
    blocked = {}
    with open(verdicts) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            blocked[int(parts[0])] = parts[1] == "1"
    by = collections.defaultdict(lambda: [0, 0])
    with open(src, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            by[r["class"]][0] += 1
            by[r["class"]][1] += blocked[r["id"]]
    for cls, (n, b) in sorted(by.items()):
        print(f"{cls}\t{b}/{n}\t{100.0 * b / n:.3f}%")


if __name__ == "__main__":
    {"path": path, "rates": rates}[sys.argv[1]](*sys.argv[2:])
