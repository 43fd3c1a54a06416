#!/usr/bin/env python3
"""Measuring tools for bench/spinlets.sh (process sites, "spinlets").

Talks only to the 127.0.0.1 addresses it is given (spinlets.sh passes the
edge and API of the `spinforge serve` it started) and to app processes it
starts itself on a free 127.0.0.1 port. Every loop is bounded in count and
in time. The admin password, where needed, is read from --password-file
or standard input.

Subcommands:
  coldstart  first-byte time of a stopped app through the edge, against the
             same app started directly (writes a JSON file)
  deploy     creates COUNT process sites, each with the same bundle
  wake       one request through the edge to each of the given sites
  apps       count and memory of the app processes a serve runs
  wait-apps  waits until a serve runs at most N app processes
  leftovers  app processes of a data directory still alive (optionally kills
             them, by pid, after checking their SPINFORGE_SPINLET tag)
  cpu        CPU counters for the "other load" share (as in cpu_sample.py)
"""

import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

HTTP_TIMEOUT = 60  # seconds per API request


def die(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


# ---- API --------------------------------------------------------------------


class Api:
    """A logged-in API client; logs in again when the token expires."""

    def __init__(self, base, email, password):
        self.base, self.email, self.password = base.rstrip("/"), email, password
        self.lock = threading.Lock()
        self.token = None
        self.login()

    def login(self):
        body = json.dumps({"email": self.email, "password": self.password}).encode()
        status, data = self._raw("POST", "/api/v1/auth/login", body, "application/json", None)
        if status != 200:
            raise RuntimeError(f"login: HTTP {status}: {data[:200]!r}")
        self.token = json.loads(data)["access_token"]

    def _raw(self, method, path, body, content_type, token):
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        if token:
            headers["Authorization"] = "Bearer " + token
        req = urllib.request.Request(self.base + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def call(self, method, path, body=None, content_type=None):
        """Returns (status, body bytes); retries once after a 401."""
        for _ in range(2):
            token = self.token
            status, data = self._raw(method, path, body, content_type, token)
            if status != 401:
                return status, data
            with self.lock:
                if self.token == token:
                    self.login()
        return status, data

    def status(self, domain):
        status, data = self.call("GET", f"/api/v1/sites/{domain}/status")
        if status != 200:
            raise RuntimeError(f"status {domain}: HTTP {status}: {data[:200]!r}")
        return json.loads(data).get("spinlet") or {}

    def stop(self, domain, timeout=30.0):
        """Restart API (stops now, starts on the next request), then waits
        until the status says stopped."""
        status, data = self.call("POST", f"/api/v1/sites/{domain}/restart", b"", "application/json")
        if status != 204:
            raise RuntimeError(f"restart {domain}: HTTP {status}: {data[:200]!r}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status(domain).get("state") == "stopped":
                return
            time.sleep(0.05)
        raise RuntimeError(f"{domain} did not reach 'stopped' within {timeout} s")


def read_password(args):
    """From --password-file, else the first line of standard input."""
    if args.password_file:
        with open(args.password_file) as f:
            line = f.readline()
    else:
        line = sys.stdin.readline()
    if not line:
        die("no admin password given")
    return line.rstrip("\n")


# ---- raw HTTP timing ---------------------------------------------------------


def request_bytes(path, host):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def read_rest(sock, first, limit=1 << 20):
    """Reads the rest of a Connection: close response; returns it all."""
    chunks = [first]
    size = len(first)
    while size < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def check_ok(response, what):
    if not response.startswith(b"HTTP/1.1 200") and not response.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(f"{what}: not a 200: {response[:200]!r}")
    return response.split(b"\r\n\r\n", 1)[-1]


def timed_request(port, payload, timeout):
    """Connects, sends, waits for the first byte. Returns (seconds to the
    first byte from before connect, whole response)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        first = sock.recv(1)
        t1 = time.perf_counter()
        if not first:
            raise RuntimeError("connection closed before any byte")
        return t1 - t0, read_rest(sock, first)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_env(base_env, app_dir, port, extra):
    """The environment PlainSpawner gives an app (crates/spinlet/src/spawn.rs):
    PATH, LANG and TZ of the server, HOME = the app folder, the manifest's
    [env], PORT and HOST. SPINFORGE_SPINLET is left out on purpose: the
    direct run is not SpinForge's process."""
    env = {k: base_env[k] for k in ("PATH", "LANG", "TZ") if k in base_env}
    env["HOME"] = app_dir
    env.update(extra)
    env["PORT"] = str(port)
    env["HOST"] = "127.0.0.1"
    return env


def stop_child(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def direct_start(argv, app_dir, env_extra, path, poll_s, timeout):
    """Starts the app itself, polls until it answers, returns seconds from
    spawn to the first byte of the answer to `path`."""
    port = free_port()
    env = app_env(os.environ, app_dir, port, env_extra)
    payload = request_bytes(path, "127.0.0.1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=app_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as SpinForge does
    )
    try:
        deadline = t0 + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                    sock.sendall(payload)
                    first = sock.recv(1)
                    t1 = time.perf_counter()
                    if not first:
                        raise RuntimeError("direct: closed before any byte")
                    check_ok(read_rest(sock, first), "direct")
                    return t1 - t0
            except ConnectionRefusedError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"direct: the app exited with {proc.returncode}")
            if time.perf_counter() > deadline:
                raise RuntimeError("direct: the app did not answer in time")
            time.sleep(poll_s)
    finally:
        stop_child(proc)


def percentile(values, p):
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values):
    return {
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "min": min(values),
        "max": max(values),
    }


def cmd_coldstart(args):
    password = read_password(args)
    api = Api(args.api, args.email, password)
    argv = json.loads(args.argv)
    env_extra = json.loads(args.env)
    payload = request_bytes(args.path, args.domain)
    ms = 1000.0

    def via_spinforge():
        api.stop(args.domain)
        time.sleep(args.settle)
        seconds, response = timed_request(args.edge_port, payload, args.timeout)
        body = check_ok(response, "via SpinForge")
        status = api.status(args.domain)
        if status.get("state") != "running":
            raise RuntimeError(f"after the request the app is {status.get('state')}")
        return seconds, status.get("pid"), body

    def direct():
        time.sleep(args.settle)
        return direct_start(argv, args.app_dir, env_extra, args.path, args.poll, args.timeout)

    # One unrecorded round warms the page cache and both code paths.
    via_spinforge()
    direct()

    rows = []
    pids = set()
    started = time.monotonic()
    for i in range(args.runs):
        if time.monotonic() - started > args.budget:
            print(f"coldstart: time budget of {args.budget} s used up after {i} runs",
                  file=sys.stderr)
            break
        # Alternate the order so drift on the host hits both sides alike.
        if i % 2 == 0:
            d = direct()
            s, pid, _ = via_spinforge()
        else:
            s, pid, _ = via_spinforge()
            d = direct()
        pids.add(pid)
        rows.append({"direct_ms": d * ms, "spinforge_ms": s * ms, "overhead_ms": (s - d) * ms})
        print(f"  run {i + 1:2d}: direct {d * ms:7.2f} ms, via SpinForge {s * ms:7.2f} ms, "
              f"overhead {(s - d) * ms:6.2f} ms (app pid {pid})", file=sys.stderr)
    if len(pids) != len(rows):
        raise RuntimeError(f"expected a new app process per run, saw {len(pids)} pids "
                           f"in {len(rows)} runs")

    direct_ms = [r["direct_ms"] for r in rows]
    sf_ms = [r["spinforge_ms"] for r in rows]
    result = {
        "label": args.label,
        "domain": args.domain,
        "argv": argv,
        "path": args.path,
        "runs": len(rows),
        "poll_ms": args.poll * ms,
        "settle_ms": args.settle * ms,
        "rows": rows,
        "direct": summary(direct_ms),
        "spinforge": summary(sf_ms),
        "overhead": summary([r["overhead_ms"] for r in rows]),
        "median_difference_ms": statistics.median(sf_ms) - statistics.median(direct_ms),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    o = result["overhead"]
    print(f"coldstart {args.label}: overhead median {o['median']:.2f} ms, "
          f"p90 {o['p90']:.2f} ms over {len(rows)} runs", file=sys.stderr)


# ---- many sites --------------------------------------------------------------


def proc_children(parent):
    """Pids whose parent is `parent`."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[1]) == parent:
            kids.append(int(name))
    return kids


def spinlet_tag(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    for var in environ.split(b"\0"):
        if var.startswith(b"SPINFORGE_SPINLET="):
            return var.split(b"=", 1)[1].decode()
    return None


def serve_apps(serve_pid):
    """The app processes (children carrying SPINFORGE_SPINLET) of a serve."""
    return [pid for pid in proc_children(serve_pid) if spinlet_tag(pid) is not None]


def kib_field(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmd_apps(args):
    pids = serve_apps(args.serve_pid)
    rss = sum(kib_field(f"/proc/{pid}/status", "VmRSS") for pid in pids)
    pss = sum(kib_field(f"/proc/{pid}/smaps_rollup", "Pss") for pid in pids)
    print(f"APPS={len(pids)}")
    print(f"APPS_RSS_KB={rss}")
    print(f"APPS_PSS_KB={pss}")


def cmd_wait_apps(args):
    deadline = time.monotonic() + args.timeout
    while True:
        count = len(serve_apps(args.serve_pid))
        if count <= args.max:
            print(count)
            return
        if time.monotonic() > deadline:
            print(count)
            print(f"wait-apps: still {count} apps after {args.timeout} s", file=sys.stderr)
            sys.exit(1)
        time.sleep(1)


def make_bundle(app_dir):
    """A gzip tar of every regular file at the top of app_dir."""
    import io
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name in sorted(os.listdir(app_dir)):
            path = os.path.join(app_dir, name)
            if os.path.isfile(path):
                tar.add(path, arcname=name)
    return raw.getvalue()


def site_name(i, suffix):
    return f"s{i:04d}.{suffix}"


def cmd_deploy(args):
    password = read_password(args)
    api = Api(args.api, args.email, password)
    bundle = make_bundle(args.app_dir)
    started = time.monotonic()
    deadline = started + args.budget
    done_at = []
    failures = []
    peak = [0]
    checkpoints = []  # "deploys:serve VmRSS KiB"
    gate = threading.Lock()
    stop = threading.Event()

    def throttle():
        # Every deploy starts the app once (health check) and leaves it
        # running until its idle timeout: keep that number bounded.
        with gate:
            for _ in range(600):
                if stop.is_set():
                    return
                count = len(serve_apps(args.serve_pid))
                peak[0] = max(peak[0], count)
                if count < args.max_running:
                    return
                time.sleep(0.5)

    def one(i):
        if stop.is_set() or time.monotonic() > deadline:
            stop.set()
            return i, "skipped: time budget used up"
        throttle()
        domain = site_name(i, args.suffix)
        body = json.dumps({"domain": domain, "type": "process"}).encode()
        status, data = api.call("POST", "/api/v1/sites", body, "application/json")
        if status != 201:
            return i, f"create: HTTP {status}: {data[:200]!r}"
        status, data = api.call("POST", f"/api/v1/sites/{domain}/releases", bundle,
                                "application/gzip")
        if status != 201:
            return i, f"release: HTTP {status}: {data[:200]!r}"
        return i, None

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(one, i) for i in range(args.count)]
        for n, future in enumerate(as_completed(futures), 1):
            try:
                i, error = future.result()
            except Exception as e:  # noqa: BLE001 - report and go on
                i, error = -1, repr(e)
            if error:
                failures.append((i, error))
                if len(failures) >= 10:
                    stop.set()
            else:
                done_at.append(time.monotonic() - started)
            if n % args.checkpoint == 0:
                rss = kib_field(f"/proc/{args.serve_pid}/status", "VmRSS")
                checkpoints.append(f"{n}:{rss}")
                print(f"  {n}/{args.count} deploys finished, {len(failures)} failed, "
                      f"{time.monotonic() - started:.0f} s, serve VmRSS {rss / 1024:.1f} MiB",
                      file=sys.stderr)
    elapsed = time.monotonic() - started
    for i, error in failures[:5]:
        print(f"  site {i}: {error}", file=sys.stderr)
    print(f"DEPLOY_OK={len(done_at)}")
    print(f"DEPLOY_FAILED={len(failures)}")
    print(f"DEPLOY_SECONDS={elapsed:.1f}")
    print(f"DEPLOY_RATE={len(done_at) / elapsed:.1f}")
    print(f"DEPLOY_PEAK_APPS={peak[0]}")
    print(f"DEPLOY_RSS_CHECKPOINTS={' '.join(checkpoints)}")
    if failures or len(done_at) != args.count:
        sys.exit(1)


def cmd_wake(args):
    domains = [site_name(int(i), args.suffix) for i in args.indexes.split(",")]
    started = time.monotonic()

    def one(domain):
        seconds, response = timed_request(args.edge_port, request_bytes("/", domain), 60)
        check_ok(response, domain)
        return seconds

    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        times = list(pool.map(one, domains))
    print(f"WAKE_COUNT={len(times)}")
    print(f"WAKE_SECONDS={time.monotonic() - started:.2f}")
    print(f"WAKE_MEDIAN_MS={statistics.median(times) * 1000:.1f}")
    print(f"WAKE_MAX_MS={max(times) * 1000:.1f}")


# ---- cleanup -----------------------------------------------------------------


def cmd_leftovers(args):
    """Pids recorded in the data directory's running.json (and any pids
    given) that are still alive with their SPINFORGE_SPINLET tag."""
    recorded = {}
    state = os.path.join(args.data_dir, "spinlets", "running.json")
    try:
        with open(state) as f:
            recorded = {int(k): v for k, v in json.load(f).items()}
    except (OSError, ValueError):
        pass
    for pid in args.pids:
        tag = spinlet_tag(pid)
        if tag is not None:
            recorded.setdefault(pid, tag)
    alive = [pid for pid, tag in recorded.items() if spinlet_tag(pid) == tag]
    for pid in alive:
        print(pid)
        if args.kill:
            try:
                os.killpg(pid, signal.SIGKILL)  # apps lead their own group
            except ProcessLookupError:
                pass
            except PermissionError:
                os.kill(pid, signal.SIGKILL)


def cmd_cpu(_args):
    """busy ticks, total ticks, ticks of our process group (see cpu_sample.py)
    plus those of the app processes of the serve pids in SPINLET_SERVE_PIDS."""
    pgrp = os.getpgrp()
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    total = sum(ticks)
    busy = total - ticks[3] - ticks[4] - ticks[5] - ticks[6]
    serves = {int(p) for p in os.environ.get("SPINLET_SERVE_PIDS", "").split() if p}
    ours = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # rest: state ppid pgrp ...; apps lead their own group, child of serve
        if int(rest[2]) == pgrp or int(rest[1]) in serves:
            ours += sum(int(v) for v in rest[11:15])
    print(busy, total, ours)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("coldstart")
    p.add_argument("--api", required=True)
    p.add_argument("--email", required=True)
    p.add_argument("--password-file")
    p.add_argument("--edge-port", type=int, required=True)
    p.add_argument("--domain", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--app-dir", required=True, help="the same files as the deployed bundle")
    p.add_argument("--argv", required=True, help="JSON list: the manifest's command")
    p.add_argument("--env", default="{}", help="JSON object: the manifest's [env]")
    p.add_argument("--path", default="/")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--poll", type=float, default=0.001, help="direct-run poll interval, s")
    p.add_argument("--settle", type=float, default=0.3, help="pause before each start, s")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--budget", type=float, default=240.0, help="seconds for all runs")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_coldstart)

    p = sub.add_parser("deploy")
    p.add_argument("--api", required=True)
    p.add_argument("--email", required=True)
    p.add_argument("--password-file")
    p.add_argument("--serve-pid", type=int, required=True)
    p.add_argument("--app-dir", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--suffix", required=True)
    p.add_argument("--max-running", type=int, default=200)
    p.add_argument("--budget", type=float, default=600.0)
    p.add_argument("--checkpoint", type=int, default=100, help="record serve's RSS every N")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("wake")
    p.add_argument("--edge-port", type=int, required=True)
    p.add_argument("--suffix", required=True)
    p.add_argument("--indexes", required=True, help="comma-separated site numbers")
    p.add_argument("--workers", type=int, default=4)
    p.set_defaults(func=cmd_wake)

    p = sub.add_parser("apps")
    p.add_argument("--serve-pid", type=int, required=True)
    p.set_defaults(func=cmd_apps)

    p = sub.add_parser("wait-apps")
    p.add_argument("--serve-pid", type=int, required=True)
    p.add_argument("--max", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=cmd_wait_apps)

    p = sub.add_parser("leftovers")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--kill", action="store_true")
    p.add_argument("pids", type=int, nargs="*")
    p.set_defaults(func=cmd_leftovers)

    p = sub.add_parser("cpu")
    p.set_defaults(func=cmd_cpu)

    args = parser.parse_args()
    # SIGTERM from spinlets.sh's cleanup: unwind, so `finally` stops any app
    # this helper started itself.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        args.func(args)
    except RuntimeError as e:
        die(str(e))


if __name__ == "__main__":
    main()
