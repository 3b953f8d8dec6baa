"""A stand-in for vLLM's server (standard library only) to test the supervision in seconds.

    fake_server.py --host H --port P --mode ok|exit|never [--grandchild FILE]

ok: answers GET /health with 200 after --delay s; exit: prints a line and exits 3;
never: runs but never answers. --grandchild starts a `sleep` that outlives this process
(an orphan, like a vLLM worker would be) and writes its pid to FILE.
"""

from __future__ import annotations

import argparse
import http.server
import subprocess
import sys
import time


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        ok = self.path == "/health"
        self.send_response(200 if ok else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("ok", "exit", "never"), default="ok")
    p.add_argument("--delay", type=float, default=0.5)
    p.add_argument("--grandchild")
    a = p.parse_args()
    print(f"fake server mode {a.mode} on {a.host}:{a.port}", flush=True)
    if a.grandchild:
        gc = subprocess.Popen(["sleep", "300"], start_new_session=True)
        with open(a.grandchild, "w") as fh:
            fh.write(str(gc.pid))
    if a.mode == "exit":
        print("fatal: pretend the model failed to load", flush=True)
        return 3
    if a.mode == "never":
        time.sleep(3600)
        return 0
    time.sleep(a.delay)
    http.server.HTTPServer((a.host, a.port), Health).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
