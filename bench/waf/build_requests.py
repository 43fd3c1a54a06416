#!/usr/bin/env python3
"""Builds the HTTP requests both WAFs are fed, as JSON lines.

    build_requests.py LIBINJECTION_DATA_DIR OUT.jsonl

Every input is placed three ways: in a query argument, in an urlencoded
body and in a JSON body. The libinjection files hold raw payloads, so
they are fully percent-encoded. The traversal and command-injection lists
are Intruder payloads written to be pasted into a URL as they are (many
carry their own %-escapes), so only characters that would break the URL
or the form are escaped, and the JSON body gets the value the server
would see after its one URL decoding. A benign JSON document is sent as
the JSON body itself.
"""

import glob
import json
import os
import sys
from urllib.parse import quote, unquote

HERE = os.path.dirname(os.path.abspath(__file__))


def lines(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            line = line.rstrip("\n").rstrip("\r")
            if line and not line.startswith("#"):
                yield line


def encode_raw(value):
    return quote(value.encode("utf-8", "surrogateescape"), safe="")


def encode_url_payload(value):
    # Keep the payload's own %-escapes; escape what would end the argument.
    return quote(value.encode("utf-8", "surrogateescape"), safe="%/:=,;@$!*'()~.-_\\")


def requests_for(cls, kind, source, value, url_format, n):
    if url_format:
        arg = encode_url_payload(value)
        plain = unquote(value, errors="surrogateescape")
    else:
        arg = encode_raw(value)
        plain = value
    plain = plain.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    base = {"set": "attack" if cls != "benign" else "benign", "class": cls, "kind": kind, "source": source}
    yield dict(base, id=n, placement="query", method="GET", target=f"/bench/search?q={arg}", ctype=None, body="")
    yield dict(base, id=n + 1, placement="form", method="POST", target="/bench/submit",
               ctype="application/x-www-form-urlencoded", body=f"q={arg}")
    if kind == "json":
        body = value
    else:
        body = json.dumps({"q": plain}, ensure_ascii=False)
    yield dict(base, id=n + 2, placement="json", method="POST", target="/bench/api",
               ctype="application/json", body=body)


def main():
    data_dir, out_path = sys.argv[1], sys.argv[2]
    inputs = []  # (class, kind, source, value, url_format)
    for path in sorted(glob.glob(os.path.join(data_dir, "sqli-*.txt"))):
        inputs += [("sqli", "attack", os.path.basename(path), v, False) for v in lines(path)]
    for path in sorted(glob.glob(os.path.join(data_dir, "xss-*.txt"))):
        inputs += [("xss", "attack", os.path.basename(path), v, False) for v in lines(path)]
    inputs += [("lfi", "attack", "traversal.txt", v, True) for v in lines(os.path.join(HERE, "attacks", "traversal.txt"))]
    inputs += [("cmdi", "attack", "cmdi.txt", v, True) for v in lines(os.path.join(HERE, "attacks", "cmdi.txt"))]
    inputs += [("benign", "libinjection-fp", "false_positives.txt", v, False)
               for v in lines(os.path.join(data_dir, "false_positives.txt"))]
    with open(os.path.join(HERE, "benign", "corpus.jsonl"), encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            inputs.append(("benign", e["kind"], "corpus.jsonl", e["text"], False))

    # One input counted once per class, even if two files share it.
    seen, n = set(), 0
    with open(out_path, "w", encoding="utf-8") as out:
        for cls, kind, source, value, url_format in inputs:
            if (cls, value) in seen:
                continue
            seen.add((cls, value))
            for req in requests_for(cls, kind, source, value, url_format, n):
                out.write(json.dumps(req, ensure_ascii=False) + "\n")
            n += 3
    print(f"{n} requests from {len(seen)} inputs -> {out_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
