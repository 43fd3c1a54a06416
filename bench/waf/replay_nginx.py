#!/usr/bin/env python3
"""Sends every request of REQUESTS.jsonl to a WAF on loopback and writes
`id<TAB>blocked<TAB>status` per request (blocked: any status but 200).

    replay_nginx.py REQUESTS.jsonl HOST PORT OUT.tsv

Only loopback addresses are accepted. The headers match the ones
crates/shield/examples/waf_bench.rs gives the SpinForge engine.
"""

import http.client
import ipaddress
import json
import sys
import time

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def main():
    path, host, port, out_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit("refusing to send attack traffic to a non-loopback address")
    conn = http.client.HTTPConnection(host, port, timeout=10)
    started, count = time.time(), 0
    with open(path, encoding="utf-8") as f, open(out_path, "w") as out:
        for line in f:
            req = json.loads(line)
            headers = {"Host": "localhost", "User-Agent": UA,
                       "Accept": "text/html,application/json;q=0.9,*/*;q=0.8"}
            body = req["body"].encode("utf-8")
            if req["ctype"]:
                headers["Content-Type"] = req["ctype"]
            for attempt in range(3):
                try:
                    conn.request(req["method"], req["target"], body=body or None, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                    if resp.will_close:
                        conn.close()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=10)
                    status = 0
            out.write(f"{req['id']}\t{int(status != 200)}\t{status}\n")
            count += 1
    print(f"{count} requests in {time.time() - started:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
