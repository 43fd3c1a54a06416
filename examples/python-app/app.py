"""A SpinForge process app that needs nothing but Python's standard library.

It listens where SpinForge tells it to (HOST and PORT), answers /health for
the readiness check, and logs one line per request to stdout, which
SpinForge captures (see `spinforge logs`).
"""

import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()
GREETING = os.environ.get("GREETING", "hello from a Python spinlet")


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self.reply(200, {"ok": True})
        elif self.path == "/":
            self.reply(200, {"message": GREETING, "pid": os.getpid(),
                             "uptime": round(time.time() - STARTED, 3)})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(length)
        self.reply(200, {"received": len(data)})

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


def main():
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer((host, port), Handler)
    # Exit cleanly on SIGTERM, the way SpinForge asks an idle app to stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        print("stopping", flush=True)


if __name__ == "__main__":
    main()
