# A spinlet that tries to break out of its sandbox and reports what
# happened. Every endpoint answers JSON: {"ok": bool, ...}; "ok" is true
# iff the attempt SUCCEEDED. Written for SpinForge's sandbox tests.
import ctypes, json, os, shutil, socket, subprocess, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

PORT = int(os.environ["PORT"])
LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
# Looked up on first use: a site profile may deny uname(2) itself.
SYSCALL_TABLES = {
    "x86_64": {"ptrace": 101, "mount": 165, "unshare": 272, "keyctl": 250,
               "bpf": 321, "perf_event_open": 298, "setns": 308},
    "aarch64": {"ptrace": 117, "mount": 40, "unshare": 97, "keyctl": 219,
                "bpf": 280, "perf_event_open": 241, "setns": 268},
}


def attempt(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as e:
        return {"ok": False, "errno": e.errno, "error": str(e)}


def read(path):
    with open(path, "rb") as f:
        return f.read(4096).decode("latin-1")


def write(path, mib=0):
    with open(path, "wb") as f:
        f.write(b"x")
        chunk = b"\0" * (1 << 20)
        for _ in range(mib):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return "written"


def connect(host, port):
    s = socket.create_connection((host, int(port)), timeout=2)
    s.close()
    return "connected"


def syscall(name):
    nr = SYSCALL_TABLES[os.uname().machine][name]
    if name == "ptrace":
        result = LIBC.syscall(nr, 16, 1, 0, 0)  # PTRACE_ATTACH to pid 1
    elif name == "mount":
        result = LIBC.syscall(nr, b"none", b"/tmp", b"tmpfs", 0, None)
    elif name == "unshare":
        result = LIBC.syscall(nr, 0x20000000)  # CLONE_NEWUTS
    elif name == "setns":
        result = LIBC.syscall(nr, 0, 0)
    else:
        result = LIBC.syscall(nr, 0, 0, 0, 0, 0)
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def fork_bomb(limit):
    """Forks up to `limit` children that each sleep 3 s, and counts how
    many the kernel allowed."""
    children, error = [], None
    for _ in range(limit):
        try:
            pid = os.fork()
        except OSError as e:
            error = e.errno
            break
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return {"forked": len(children), "errno": error}


def memory_bomb(limit_mib):
    hoard = []
    for _ in range(limit_mib // 16):
        hoard.append(bytearray(16 << 20))
    return {"allocated_mib": len(hoard) * 16}


def setuid_copy():
    shutil.copy("/usr/bin/id", "/tmp/id")
    os.chmod("/tmp/id", 0o4755)
    out = subprocess.run(["/tmp/id", "-u"], capture_output=True, text=True)
    return out.stdout.strip()


def identity():
    status = {}
    for line in read("/proc/self/status").splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
        "groups": os.getgroups(), "hostname": socket.gethostname(),
        "caps": {k: status[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
        "no_new_privs": status.get("NoNewPrivs"), "seccomp": status.get("Seccomp"),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "root": sorted(os.listdir("/")),
        "mounts": read("/proc/self/mountinfo"),
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        routes = {
            "/": lambda: {"ok": True, "pid": os.getpid()},
            "/whoami": lambda: {"ok": True, "value": identity()},
            "/read": lambda: attempt(lambda: read(q["path"])),
            "/readlink": lambda: attempt(lambda: os.readlink(q["path"])),
            "/write": lambda: attempt(lambda: write(q["path"], int(q.get("mib", 0)))),
            "/connect": lambda: attempt(lambda: connect(q["host"], q["port"])),
            "/syscall": lambda: attempt(lambda: syscall(q["name"])),
            "/forkbomb": lambda: {"ok": True, "value": fork_bomb(int(q["limit"]))},
            "/membomb": lambda: {"ok": True, "value": memory_bomb(int(q["mib"]))},
            "/setuid": lambda: attempt(setuid_copy),
            "/killall": lambda: attempt(lambda: os.kill(-1, 9)),
            "/uname": lambda: attempt(lambda: os.uname().sysname),
            "/env": lambda: {"ok": True, "value": {
                k: v for k, v in os.environ.items() if k.startswith(q.get("prefix", "-"))}},
        }
        route = routes.get(url.path)
        body = json.dumps(route() if route else {"ok": False, "error": "no route"}).encode()
        self.send_response(200 if route else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
