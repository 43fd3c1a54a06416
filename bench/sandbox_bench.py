"""Sandboxed against plain spinlets, side by side (see bench/sandbox.sh).

Starts two `spinforge serve` on loopback with temporary data folders, one
with the sandbox (the default) and one with `[sandbox] enabled = false`,
deploys the same app to both, and measures:

1. cold start: restart the app, then time one request from connect to the
   first byte; the median difference between the two servers is the
   sandbox's spawn overhead (helper exec, namespaces, mounts, cgroup,
   seccomp, and the edge dialing into the app's network namespace);
2. memory: the resident memory of every process of the instance (helper,
   namespace init and app when sandboxed; the app alone when plain);
3. throughput: wrk through the edge to each, alternating, several rounds;
4. the app alone: wrk straight at the app (inside its network namespace
   when sandboxed), its CPU time per request under the same load on both
   sides, which the edge's speed does not change;
5. on cgroup v1, next to each plain round, one more with the plain app
   moved into a CPU cgroup shaped like the sandbox's (as deep below
   serve's group, the same quota; nothing else changed): the share of
   the sandbox's cost that is the per-site CPU cgroup alone, i.e. the
   kernel scheduling the app as a group of its own next to serve.
"""

import argparse, json, os, re, shlex, shutil, signal, socket, statistics, subprocess
import sys, tempfile, time, urllib.request

DOMAIN = "bench.localhost"
PASSWORD = "bench-password-" + os.urandom(8).hex()
EMAIL = "bench@example.com"


def log(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


class Serve:
    def __init__(self, bin_path, label, sandbox):
        self.bin, self.label = bin_path, label
        self.root = tempfile.mkdtemp(prefix=f"sandbox-bench-{label}-")
        self.data = os.path.join(self.root, "data")
        config = os.path.join(self.root, "spinforge.toml")
        with open(config, "w") as f:
            # wrk from one address exceeds the edge-wide per-client rate
            # limit (6000/min), which would turn the throughput rounds into
            # a measure of 429s; both sides lift it alike.
            f.write("[shield]\nrate_per_minute = 0\n")
            # The sandbox's default CPU quota is one core; the plain
            # process may use every core. To measure the sandbox's cost
            # rather than that limit, the quota defaults to all cores here
            # (SANDBOX_CPU_PERCENT=100 measures the default limit).
            f.write(f"[sandbox]\ncpu_percent = {cpu_percent()}\n" if sandbox
                    else "[sandbox]\nenabled = false\n")
        # A plain app inherits serve's PATH, a sandboxed one gets
        # /usr/local/bin:/usr/bin:/bin. Both get the system's PATH here, so
        # both run the same interpreter: a PATH from a version manager
        # (pyenv, nvm) would compare two different pythons or nodes.
        self.env = dict(os.environ, SPINFORGE_LOG="info", HOME=self.root,
                        XDG_CONFIG_HOME=os.path.join(self.root, "cfg"),
                        PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        # serve gets a session of its own, as under systemd; a plain app
        # stays in it (the kernel's autogroup scheduler then puts both in
        # one group), a sandboxed one has its own cgroup. See wrk().
        self.proc = subprocess.Popen(
            [bin_path, "serve", "--config", config, "--data-dir", self.data,
             "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=self.env, text=True, start_new_session=True)
        try:
            self._wait_and_log_in(label)
        except BaseException:
            # Not yet in the caller's list, and in a session of its own it
            # would not see the terminal's signals either: stop it here.
            self.stop()
            raise

    def _wait_and_log_in(self, label):
        self.edge = self.api = None
        deadline = time.monotonic() + 60
        while (self.edge is None or self.api is None) and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            for prefix, attr in (("edge listening on http://", "edge"),
                                 ("API listening on http://", "api")):
                if prefix in line:
                    setattr(self, attr, line.split(prefix)[1].split()[0])
        if self.edge is None or self.api is None:
            raise RuntimeError(f"{label}: serve did not start")
        # Keep draining the log so serve never blocks on a full pipe.
        import threading
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        self.edge_port = int(self.edge.rsplit(":", 1)[1])
        self.cli(["admin", "create", "--data-dir", self.data, "--email", EMAIL,
                  "--password-stdin"], PASSWORD + "\n")
        self.cli(["login", "--email", EMAIL, "--password-stdin"], PASSWORD + "\n")
        self.token = self.login()

    def cli(self, args, stdin=None):
        out = subprocess.run([self.bin, *args], input=stdin, text=True, capture_output=True,
                             env=dict(self.env, SPINFORGE_API=f"http://{self.api}"), timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{self.label}: spinforge {args[0]}: {out.stderr}")
        return out.stdout

    def login(self):
        body = json.dumps({"email": EMAIL, "password": PASSWORD}).encode()
        req = urllib.request.Request(f"http://{self.api}/api/v1/auth/login", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)["access_token"]

    def call(self, method, path):
        req = urllib.request.Request(f"http://{self.api}/api/v1{path}", method=method,
                                     data=b"" if method == "POST" else None,
                                     headers={"Authorization": "Bearer " + self.token})
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            return json.loads(data) if data else None

    def status(self):
        return self.call("GET", f"/sites/{DOMAIN}/status")["spinlet"] or {}

    def stop_app(self):
        self.call("POST", f"/sites/{DOMAIN}/restart")
        deadline = time.monotonic() + 30
        while self.status().get("state") != "stopped":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label}: the app did not stop")
            time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def first_byte(port, timeout=30):
    request = f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode()
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        first = s.recv(64)
        elapsed = time.perf_counter() - t0
        rest = first
        while chunk := s.recv(65536):
            rest += chunk
    if not rest.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        raise RuntimeError(f"not a 200: {rest[:120]!r}")
    return elapsed * 1000


def tree_rss_kib(root_pid):
    """RSS of `root_pid` and all its descendants, in KiB."""
    tree = tree_pids(root_pid)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+)", f.read())
                total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total, len(tree)


def warm_helpers_kib(serve_pid):
    """RSS of the idle warm helpers serve keeps for the next starts, in KiB,
    and how many there are."""
    total, count = 0, 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        parent = int(re.search(r"PPid:\s+(\d+)", status).group(1))
        if parent == serve_pid and b"(warm)" in args:
            m = re.search(r"VmRSS:\s+(\d+)", status)
            total += int(m.group(1)) if m else 0
            count += 1
    return total, count


TICK = os.sysconf("SC_CLK_TCK")
PROFILED = set()


def cpu_seconds(pids):
    """user + system CPU time of `pids` (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


def tree_pids(root_pid):
    """`root_pid` and all its descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def cpu_percent():
    """The sandboxed app's CPU quota in this bench, in % of one core."""
    return int(os.environ.get("SANDBOX_CPU_PERCENT", str(100 * os.cpu_count())))


class OwnCpuGroup:
    """A cgroup v1 CPU group for the plain app's processes, shaped like the
    sandbox's: three levels below serve's own CPU group (the sandbox uses
    spinforge/SCOPE/INSTANCE) and the same CPU quota; nothing else of the
    sandbox. See item 5 of the module's docstring. Processes are moved
    whole (`cgroup.procs`), and the threads they start later follow."""

    ROOT = "/sys/fs/cgroup/cpu"

    @classmethod
    def make(cls, serve_pid):
        """The group, or None, said on stderr, where it cannot be made."""
        if not os.path.isfile(os.path.join(cls.ROOT, "cgroup.procs")):
            log("no cgroup v1 cpu hierarchy here: the plain app in a CPU cgroup "
                "of its own is not measured")
            return None
        group = cls.__new__(cls)
        group.top = None
        try:
            group._make(serve_pid)
            return group
        except OSError as e:
            log(f"cannot make a CPU cgroup for the plain app ({e}): not measured")
            group.remove()
            return None
        except BaseException:
            group.remove()
            raise

    def _make(self, serve_pid):
        home = None
        with open(f"/proc/{serve_pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpu" in controllers.split(","):
                    home = path
        if home is None:
            raise OSError("serve is in no cgroup v1 cpu group")
        # Where a plain app starts, and where it goes back after a round.
        self.home = self.ROOT + home.rstrip("/")
        self.top = os.path.join(self.home, f"spinforge-bench-{os.getpid()}-{os.urandom(3).hex()}")
        self.path = os.path.join(self.top, "plain", "app")
        # The path as /proc/PID/cgroup names it, to check each move.
        self.name = self.path[len(self.ROOT):]
        os.makedirs(self.path)
        with open(os.path.join(self.path, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(cpu_percent() * period // 100))

    def _group_of(self, pid):
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "cpu" in controllers.split(","):
                    return path
        return None

    def _members(self):
        with open(os.path.join(self.path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]

    def enter(self, pids):
        """Moves `pids` in; fails unless every one still alive is in."""
        for pid in pids:
            try:
                with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except ProcessLookupError:
                pass
        inside = 0
        for pid in pids:
            try:
                group = self._group_of(pid)
            except FileNotFoundError:
                continue
            if group != self.name:
                raise RuntimeError(f"process {pid} is in {group}, not in {self.name}")
            inside += 1
        if inside == 0:
            raise RuntimeError("no process of the plain app is left to move")

    def leave(self):
        """Moves everything in the group, whenever it got there, back to
        serve's group; fails if anything stays."""
        for pid in self._members():
            try:
                with open(os.path.join(self.home, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except ProcessLookupError:
                pass
        left = self._members()
        if left:
            raise RuntimeError(f"processes {left} did not leave {self.name}")

    def remove(self):
        if self.top is None:
            return
        try:
            if os.path.isdir(self.path):
                self.leave()
        except (OSError, RuntimeError) as e:
            log(f"emptying {self.top}: {e}")
        for path in (self.path, os.path.dirname(self.path), self.top):
            if not remove_group_dir(path, self.leave):
                return


def remove_group_dir(path, empty):
    """Removes the cgroup folder `path`, retrying for up to 5 seconds while
    a process moved out is still exiting (calling `empty` again, in case
    one was started meanwhile). False, said on stderr, if it stays."""
    for _ in range(50):
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.1)
            try:
                empty()
            except (OSError, RuntimeError):
                pass
    log(f"could not remove {path}; remove it by hand")
    return False


def grouped_wrk(server, group):
    """One wrk round through the edge with the plain app in `group`."""
    first_byte(server.edge_port)
    pid = server.status().get("pid")
    if not pid:
        raise RuntimeError("the plain app is not running")
    group.enter(tree_pids(pid))
    try:
        result = wrk(server)
    finally:
        group.leave()
    if server.status().get("pid") != pid:
        raise RuntimeError("the plain app restarted during the grouped round")
    return result


def wrk(server):
    """One wrk round through the server's edge: req/s, and the CPU time per
    request of serve (edge and dialer threads) and of the app's processes
    (helper, init and app when sandboxed), which stays comparable on a
    loaded host where req/s does not.

    wrk runs in a session of its own, like a client on another machine
    would. Started from serve's session, the kernel's autogroup scheduler
    would put wrk, serve and a plain app in one group, and on this 2-core
    host that grouping alone made the plain side's requests about 15%
    cheaper (the app took fewer, larger batches) and the sandboxed app,
    in its own cgroup, look that much slower. Both sides get the same
    setup: serve in its own session (see Serve), wrk in another."""
    first_byte(server.edge_port)  # the app runs before the CPU is sampled
    app = tree_pids(server.status()["pid"])
    edge0, app0 = cpu_seconds([server.proc.pid]), cpu_seconds(app)
    perf = None
    if os.environ.get("SANDBOX_PERF") and shutil.which("perf") and server.label not in PROFILED:
        PROFILED.add(server.label)
        # Where the CPU goes, per side: sampled for 8 of wrk's 10 seconds,
        # serve and the app's processes only.
        data = os.path.join(os.environ.get("SANDBOX_PERF_DIR", "/tmp"),
                            f"sandbox-perf-{server.label}.data")
        pids = ",".join(str(p) for p in sorted(app | {server.proc.pid}))
        perf = (data, subprocess.Popen(
            ["perf", "record", "-q", "-F", "499", "-g", "-o", data, "-p", pids,
             "--", "sleep", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    out = subprocess.run(["setsid", "wrk", "-t2", "-c32", "-d10s", "-H", f"Host: {DOMAIN}",
                          f"http://127.0.0.1:{server.edge_port}/"], capture_output=True,
                         text=True, timeout=60).stdout
    if perf:
        perf[1].wait(timeout=30)
        report = subprocess.run(["perf", "report", "-i", perf[0], "--no-children",
                                 "--sort", "comm,sym", "--stdio", "-g", "none",
                                 "--percent-limit", "0.7"], capture_output=True,
                                text=True, timeout=120).stdout
        log(f"perf, {server.label} (file {perf[0]}):\n" + "\n".join(
            l for l in report.splitlines() if l and not l.startswith("#")))
    edge1, app1 = cpu_seconds([server.proc.pid]), cpu_seconds(app)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{server.label}: wrk saw errors: {out}")
    return rps, (edge1 - edge0) * 1e6 / requests, (app1 - app0) * 1e6 / requests


def wrk_direct(server):
    """One wrk round straight at the app, not through the edge: the app's
    CPU time per request when both sides get the same load, whatever the
    edge does. A sandboxed app is reached from inside its network
    namespace (`nsenter -n` into the helper's, which is the app's), a
    plain one on the host's loopback."""
    first_byte(server.edge_port)
    status = server.status()
    app = tree_pids(status["pid"])
    cmd = ["setsid", "wrk", "-t2", "-c32", "-d10s", f"http://127.0.0.1:{status['port']}/"]
    if server.label == "sandboxed":
        cmd = ["nsenter", "-t", str(status["pid"]), "-n", *cmd]
    cpu0 = cpu_seconds(app)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    cpu1 = cpu_seconds(app)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise RuntimeError(f"wrk saw errors: {out}")
    return (cpu1 - cpu0) * 1e6 / requests


# sandbox.sh reads it before it builds; read here when run directly.
LOADAVG = os.environ.get("SANDBOX_LOADAVG") or open("/proc/loadavg").read()
LOADAVG = " / ".join(LOADAVG.split(" ")[:3])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--doc", required=True)
    p.add_argument("--profile", default="release")
    args = p.parse_args()

    servers = []
    group = None
    try:
        for label, sandbox in (("sandboxed", True), ("plain", False)):
            log(f"starting the {label} server")
            server = Serve(args.bin, label, sandbox)
            servers.append(server)
            server.cli(["deploy", args.app, "--domain", DOMAIN, "--type", "process"])
        sandboxed, plain = servers

        log(f"cold starts: {args.runs} per side, alternating")
        cold = {"sandboxed": [], "plain": []}
        for i in range(args.runs + 1):
            for server in (servers if i % 2 == 0 else servers[::-1]):
                server.stop_app()
                time.sleep(0.05)
                ms = first_byte(server.edge_port)
                if i > 0:  # the first round only warms caches
                    cold[server.label].append(ms)

        log("memory per spinlet")
        memory = {}
        for server in servers:
            samples, procs = [], 0
            for _ in range(5):
                server.stop_app()
                first_byte(server.edge_port)
                time.sleep(0.5)
                kib, procs = tree_rss_kib(server.status()["pid"])
                samples.append(kib)
            memory[server.label] = {"rss_kib": statistics.median(samples), "processes": procs}
        memory["sandboxed"]["cgroup_kib"] = (sandboxed.status()["sandbox"]["memory_bytes"]
                                             or 0) // 1024
        (memory["sandboxed"]["warm_kib"],
         memory["sandboxed"]["warm_count"]) = warm_helpers_kib(sandboxed.proc.pid)

        log(f"throughput: {args.rounds} wrk rounds per side, alternating")
        sides = ("sandboxed", "plain", "grouped")
        rps = {k: [] for k in sides}
        cpu_edge = {k: [] for k in sides}
        cpu_app = {k: [] for k in sides}
        group = OwnCpuGroup.make(plain.proc.pid)
        for i in range(args.rounds):
            for server in (servers if i % 2 == 0 else servers[::-1]):
                # The grouped plain round goes before or after the plain
                # one, alternating like the servers.
                runs = [server.label]
                if server is plain and group:
                    runs = ["plain", "grouped"] if i % 2 == 0 else ["grouped", "plain"]
                for label in runs:
                    r, e, a = grouped_wrk(plain, group) if label == "grouped" else wrk(server)
                    rps[label].append(r)
                    cpu_edge[label].append(e)
                    cpu_app[label].append(a)

        log(f"app alone: {args.rounds} wrk rounds per side straight at the app, alternating")
        cpu_direct = {"sandboxed": [], "plain": []}
        for i in range(args.rounds):
            for server in (servers if i % 2 == 0 else servers[::-1]):
                cpu_direct[server.label].append(wrk_direct(server))
    finally:
        for server in servers:
            server.stop()
        if group:
            group.remove()

    med = {k: statistics.median(v) for k, v in cold.items()}
    overhead = med["sandboxed"] - med["plain"]
    ratio = statistics.median(rps["sandboxed"]) / statistics.median(rps["plain"])
    measured = [k for k in rps if rps[k]]
    ce = {k: statistics.median(cpu_edge[k]) for k in measured}
    ca = {k: statistics.median(cpu_app[k]) for k in measured}
    ct = {k: statistics.median(e + a for e, a in zip(cpu_edge[k], cpu_app[k])) for k in measured}
    if rps["grouped"]:
        grouped = f"""
| req/s, the plain app in a CPU cgroup like the sandbox's (same depth and quota; nothing else changed), median | - | {statistics.median(rps['grouped']):.0f} | {statistics.median(rps['grouped']) / statistics.median(rps['plain']):.2f}x of plain | |
| CPU per request, both, the plain app in a CPU cgroup like the sandbox's, median | - | {ce['grouped']:.0f} + {ca['grouped']:.0f} µs | {ct['plain'] / ct['grouped']:.2f}x (plain/grouped) | |"""
        grouped_raw = f"""
plain app in a CPU cgroup like the sandbox's: req/s {', '.join(f'{x:.0f}' for x in rps['grouped'])}; CPU µs per request {', '.join(f'{e:.0f}+{a:.0f}' for e, a in zip(cpu_edge['grouped'], cpu_app['grouped']))};"""
    else:
        grouped = grouped_raw = ""
    cd = {k: statistics.median(v) for k, v in cpu_direct.items()}
    kernel = os.uname().release
    # Each app's table has its own markers, so a run rewrites only its
    # table and leaves the rest of the section (other apps, the analysis)
    # as it is.
    app_name = os.path.basename(os.path.abspath(args.app))
    marker = f"bench-sandbox-{app_name}"
    knobs = "".join(f"{k}={shlex.quote(os.environ[k])} "
                    for k in ("SANDBOX_PROFILE", "SANDBOX_APP", "SANDBOX_ROUNDS",
                              "SANDBOX_RUNS", "SANDBOX_CPU_PERCENT", "SANDBOX_PERF")
                    if os.environ.get(k))
    table = f"""<!-- {marker}:start -->
`{knobs}bash bench/sandbox.sh` ({args.profile} build, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {kernel},
load average at start {LOADAVG},
{os.cpu_count()} cores shared with other work, cgroup v1; app: {os.path.relpath(args.app)};
sandboxed app's CPU quota {cpu_percent()}% of one core;
both servers on this host, requests through the edge on 127.0.0.1).

| measure | sandboxed | plain | result | target |
|---|---|---|---|---|
| cold start to first byte, median of {len(cold['plain'])} | {med['sandboxed']:.1f} ms | {med['plain']:.1f} ms | **+{overhead:.1f} ms** | <= 15 ms extra |
| cold start p90 | {sorted(cold['sandboxed'])[int(0.9 * (len(cold['sandboxed']) - 1))]:.1f} ms | {sorted(cold['plain'])[int(0.9 * (len(cold['plain']) - 1))]:.1f} ms | | |
| RSS of the instance's processes | {memory['sandboxed']['rss_kib'] / 1024:.1f} MiB ({memory['sandboxed']['processes']} processes) | {memory['plain']['rss_kib'] / 1024:.1f} MiB ({memory['plain']['processes']} process) | **+{(memory['sandboxed']['rss_kib'] - memory['plain']['rss_kib']) / 1024:.1f} MiB** | |
| cgroup memory (sandboxed, page cache and tmpfs included) | {memory['sandboxed']['cgroup_kib'] / 1024:.1f} MiB | - | | |
| idle warm helpers ({memory['sandboxed']['warm_count']}), once per serve (not per spinlet) | {memory['sandboxed']['warm_kib'] / 1024:.1f} MiB | - | | |
| req/s, wrk -t2 -c32 -d10s, median of {args.rounds} | {statistics.median(rps['sandboxed']):.0f} | {statistics.median(rps['plain']):.0f} | **{ratio:.2f}x** | >= 0.95x |
| CPU per request, serve (edge, dialer), median | {ce['sandboxed']:.0f} µs | {ce['plain']:.0f} µs | {ce['plain'] / ce['sandboxed']:.2f}x | |
| CPU per request, app's processes, median | {ca['sandboxed']:.0f} µs | {ca['plain']:.0f} µs | {ca['plain'] / ca['sandboxed']:.2f}x | |
| CPU per request, both, median | {ct['sandboxed']:.0f} µs | {ct['plain']:.0f} µs | **{ct['plain'] / ct['sandboxed']:.2f}x** (plain/sandboxed) | >= 0.95x |
| CPU per request, app alone (wrk straight at it, same load both sides), median | {cd['sandboxed']:.1f} µs | {cd['plain']:.1f} µs | {cd['plain'] / cd['sandboxed']:.2f}x | |{grouped}

Raw: cold starts sandboxed {', '.join(f'{x:.1f}' for x in cold['sandboxed'])} ms;
plain {', '.join(f'{x:.1f}' for x in cold['plain'])} ms; req/s sandboxed
{', '.join(f'{x:.0f}' for x in rps['sandboxed'])}; plain {', '.join(f'{x:.0f}' for x in rps['plain'])};
CPU µs per request (serve + app) sandboxed {', '.join(f'{e:.0f}+{a:.0f}' for e, a in zip(cpu_edge['sandboxed'], cpu_app['sandboxed']))};
plain {', '.join(f'{e:.0f}+{a:.0f}' for e, a in zip(cpu_edge['plain'], cpu_app['plain']))};{grouped_raw}
CPU µs per request, app alone, sandboxed {', '.join(f'{x:.1f}' for x in cpu_direct['sandboxed'])};
plain {', '.join(f'{x:.1f}' for x in cpu_direct['plain'])}.
<!-- {marker}:end -->"""
    print(table)
    with open(args.doc) as f:
        doc = f.read()
    pattern = re.compile(rf"<!-- {re.escape(marker)}:start -->.*?<!-- {re.escape(marker)}:end -->",
                         re.S)
    section_end = "<!-- bench-sandbox:end -->"
    if pattern.search(doc):
        doc = pattern.sub(lambda _: table, doc)
    elif section_end in doc:
        # A first run for this app: its own table at the end of the section.
        doc = doc.replace(section_end, f"### {app_name}\n{table}\n\n{section_end}", 1)
    else:
        doc = doc.rstrip() + "\n\n" + table + "\n"
    with open(args.doc, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
