#!/usr/bin/env python3
"""Creates COUNT static sites through the SpinForge API, each with a tiny
one-file release, using a small bounded thread pool. Talks only to the
API address it is given (run.sh passes a 127.0.0.1 address it started).

Usage: deploy_many.py API_URL EMAIL COUNT WORKERS DOMAIN_SUFFIX
The password is read from standard input. Exits 1 if any site failed.
"""

import gzip
import io
import json
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

TIMEOUT = 60  # seconds per HTTP request
ATTEMPTS = 3  # per request; a retry only follows a 401 (expired token)


class Session:
    """Holds the access token and logs in again when it expires."""

    def __init__(self, api, email, password):
        self.api, self.email, self.password = api, email, password
        self.lock = threading.Lock()
        self.token = None
        self.login()

    def login(self):
        body = json.dumps({"email": self.email, "password": self.password})
        req = urllib.request.Request(
            self.api + "/api/v1/auth/login",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            self.token = json.load(resp)["access_token"]

    def relogin(self, stale):
        with self.lock:
            if self.token == stale:
                self.login()

    def post(self, path, data, content_type):
        for _ in range(ATTEMPTS):
            token = self.token
            req = urllib.request.Request(
                self.api + path,
                data=data,
                headers={
                    "Content-Type": content_type,
                    "Authorization": "Bearer " + token,
                },
                method="POST",
            )
            try:
                with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                    resp.read()
                    return resp.status
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    self.relogin(token)
                    continue
                raise RuntimeError(f"{path}: HTTP {e.code}: {e.read()[:200]!r}")
        raise RuntimeError(f"{path}: still unauthorized after {ATTEMPTS} tries")


def bundle(text):
    """A gzip-compressed tar holding one index.html."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo("index.html")
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def deploy(session, domain):
    site = json.dumps({"domain": domain, "type": "static"}).encode()
    session.post("/api/v1/sites", site, "application/json")
    body = bundle(f"<!doctype html><title>{domain}</title><p>{domain}</p>\n")
    session.post(f"/api/v1/sites/{domain}/releases", body, "application/gzip")


def main():
    api, email, count, workers, suffix = sys.argv[1:6]
    count, workers = int(count), int(workers)
    password = sys.stdin.readline().rstrip("\n")
    session = Session(api, email, password)

    started = time.monotonic()
    last = started
    done = failed = 0
    rates = []  # sites/s over each step of `step` sites
    step = max(1, count // 20)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(deploy, session, f"s{i:05d}.{suffix}") for i in range(count)
        ]
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as e:  # report and keep counting
                failed += 1
                if failed <= 5:
                    print(f"  deploy failed: {e}", file=sys.stderr)
            done += 1
            if done % step == 0 or done == count:
                now = time.monotonic()
                rate = step / (now - last) if now > last else 0.0
                rates.append(rate)
                print(
                    f"  {done}/{count} sites deployed "
                    f"({now - started:.0f}s, last {step}: {rate:.0f} sites/s)",
                    flush=True,
                )
                last = now
    elapsed = time.monotonic() - started
    print(f"DEPLOY_SECONDS={elapsed:.1f}")
    print(f"DEPLOY_FAILED={failed}")
    print(f"DEPLOY_STEP={step}")
    print(f"DEPLOY_RATE_FIRST={rates[0]:.0f}")
    print(f"DEPLOY_RATE_LAST={rates[-1]:.0f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
