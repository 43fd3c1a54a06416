"""What the sandbox's CPU cgroup costs an app, and what that cost depends
on (see the sandbox section of docs/BENCHMARKS.md).

Starts one `spinforge serve` on loopback with the sandbox off, deploys the
app as a plain process, and runs wrk through the edge while the app's
processes (and in two variants serve) sit in different cgroup v1 CPU
groups, in alternating rounds:

  plain    the app in serve's group, where a plain spinlet runs
  own      the app in a group of its own, three levels below serve's, with
           the sandbox's CPU quota: what the sandbox does
  flat     the app in a group of its own right below the root, no quota
  shares   like own, with 8 times the default CPU weight (cpu.shares)
  nested   serve in a group of its own and the app in one below it, as
           under a service manager that gives serve a CPU group
  shared   serve and the app together in one group of their own

For each: req/s, and the CPU time per request of serve, of the app's
processes and of wrk. Every move is checked, and everything goes back to
where it was and the groups are removed at the end.

    python3 bench/sandbox_groups.py --bin target/release/spinforge \\
        --app examples/python-app [--rounds 3] [--variants plain,own,...]

serve's processes and the app's, including any the app starts during a
round, go back to serve's group after every round.

Needs root, the cgroup v1 cpu controller and wrk. serve listens on
127.0.0.1 only, every wrk run is 10 seconds, and nothing else is aimed
anywhere.
"""

import argparse, os, resource, signal, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_bench as sb  # noqa: E402

ROOT = "/sys/fs/cgroup/cpu"
VARIANTS = ("plain", "own", "flat", "shares", "nested", "shared")


def cpu_group_of(pid):
    """The cgroup v1 cpu path of `pid`, as /proc/PID/cgroup names it."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "cpu" in controllers.split(","):
                return path
    raise RuntimeError(f"process {pid} is in no cgroup v1 cpu group")


def move(pids, group):
    """Moves whole processes into `group` (a path below ROOT) and checks."""
    for pid in pids:
        try:
            with open(os.path.join(ROOT + group, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            found = cpu_group_of(pid)
        except FileNotFoundError:
            continue
        if found.rstrip("/") != group.rstrip("/"):
            raise RuntimeError(f"process {pid} is in {found}, not in {group}")


class Groups:
    """The groups every variant needs, made below serve's own group (or the
    root, for `flat`), and removed by `remove`."""

    def __init__(self, serve_pid):
        self.home = cpu_group_of(serve_pid).rstrip("/")
        self.made = []
        try:
            self._make_all()
        except BaseException:
            self.remove()
            raise

    def _make_all(self):
        tag = f"spinforge-groups-{os.getpid()}-{os.urandom(3).hex()}"
        base = f"{self.home}/{tag}"
        quota = sb.cpu_percent() * 1000  # of the kernel's 100 ms period
        self.app = {
            "own": self._make(f"{base}/own/scope/app", quota=quota),
            "flat": self._make(f"/{tag}-flat"),
            "shares": self._make(f"{base}/shares/scope/app", quota=quota, shares=8192),
            "nested": self._make(f"{base}/nested/app"),
            "shared": self._make(f"{base}/shared"),
        }
        self.serve = {"nested": f"{base}/nested", "shared": f"{base}/shared"}

    def _make(self, group, quota=None, shares=None):
        path = ROOT + group
        parts = group.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            level = ROOT + "/" + "/".join(parts[:i])
            if not os.path.isdir(level):
                os.mkdir(level)
                self.made.append(level)
        if quota is not None:
            with open(os.path.join(path, "cpu.cfs_quota_us"), "w") as f:
                f.write(str(quota))
        if shares is not None:
            with open(os.path.join(path, "cpu.shares"), "w") as f:
                f.write(str(shares))
        return group

    def empty(self):
        """Moves every process in any of the groups back to serve's."""
        for path in self.made:
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    pids = [int(x) for x in f.read().split()]
            except FileNotFoundError:
                continue
            move(pids, self.home or "/")

    def remove(self):
        try:
            self.empty()
        except (OSError, RuntimeError) as e:
            sb.log(f"emptying the groups: {e}")
        for path in reversed(self.made):
            sb.remove_group_dir(path, self.empty)


def round_in(server, groups, variant):
    """One wrk round with the processes placed for `variant`; puts them
    back afterwards. Returns req/s and µs per request of serve, app, wrk."""
    sb.first_byte(server.edge_port)
    pid = server.status().get("pid")
    if not pid:
        raise RuntimeError("the app is not running")
    app = sb.tree_pids(pid)
    try:
        if variant in groups.serve:
            move([server.proc.pid], groups.serve[variant])
        if variant != "plain":
            move(app, groups.app[variant])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        rps, serve_us, app_us = sb.wrk(server)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        # Also whatever the app started during the round. An error here
        # must not hide the round's own.
        try:
            move([server.proc.pid], groups.home or "/")
            groups.empty()
        except (OSError, RuntimeError) as e:
            sb.log(f"moving the processes back: {e}")
    if server.status().get("pid") != pid:
        raise RuntimeError("the app restarted during the round")
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # sb.wrk runs for 10 seconds; its request count is not returned, so
    # wrk's CPU is spread over req/s times the duration.
    return rps, serve_us, app_us, wrk_cpu * 1e6 / (rps * 10)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "plain" not in variants:
        sys.exit(f"--variants: pick from {', '.join(VARIANTS)}, plain included")
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    # A plain `kill` or a closed terminal unwinds like ^C, so the groups
    # are removed.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(1))
    if not os.path.isfile(os.path.join(ROOT, "cgroup.procs")):
        sys.exit("no cgroup v1 cpu hierarchy here")

    server = sb.Serve(args.bin, "plain", False)
    groups = None
    results = {v: [] for v in variants}
    try:
        server.cli(["deploy", args.app, "--domain", sb.DOMAIN, "--type", "process"])
        groups = Groups(server.proc.pid)
        for i in range(args.rounds):
            for variant in (variants if i % 2 == 0 else variants[::-1]):
                results[variant].append(round_in(server, groups, variant))
                sb.log(f"round {i + 1}, {variant}: %.0f req/s, serve %.0f, app %.0f, "
                       "wrk %.0f µs per request" % results[variant][-1])
    finally:
        try:
            server.stop()
        finally:
            if groups:
                groups.remove()

    base = statistics.median(r[0] for r in results["plain"])
    chosen = "" if variants == list(VARIANTS) else f" --variants {args.variants}"
    print(f"`python3 bench/sandbox_groups.py --bin {os.path.relpath(args.bin)} "
          f"--app {os.path.relpath(args.app)} "
          f"--rounds {args.rounds}{chosen}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"kernel {os.uname().release}, {os.cpu_count()} cores, load average at start "
          f"{sb.LOADAVG}; medians of {args.rounds} rounds of `wrk -t2 -c32 -d10s`)\n")
    print("| where the app runs | req/s | of plain | CPU µs per request: serve | app | wrk |")
    print("|---|---|---|---|---|---|")
    for variant, rows in results.items():
        med = [statistics.median(r[k] for r in rows) for k in range(4)]
        print(f"| {variant} | {med[0]:.0f} | {med[0] / base:.2f}x | {med[1]:.0f} | "
              f"{med[2]:.0f} | {med[3]:.0f} |")


if __name__ == "__main__":
    main()
