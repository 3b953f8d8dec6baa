"""Snakemake runs for the tests, forked from one process that has already imported Snakemake.

The workflow tests start Snakemake a few hundred times (mostly dry runs); a fresh interpreter
spends about half of each dry run importing Snakemake and collecting its plugins. ``run`` takes
the same arguments as ``subprocess.run`` (``capture_output=True, text=True``) and returns a
``CompletedProcess``: a command ``[python, "-m", "snakemake", ...]`` of this interpreter runs in
a child forked from a server process that imported Snakemake once (single-threaded, so forking
is safe; the child changes to ``cwd``, takes ``env`` and runs Snakemake's own ``main``); any
other command runs as a subprocess. Set ``LLMBUILD_TEST_NO_FORK=1`` to run every command as a
subprocess.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_LOCK = threading.Lock()
_SERVER: dict = {}


def run(cmd, *, cwd=None, env=None, timeout=None, capture_output=True, text=True, check=False):
    cmd = [str(c) for c in cmd]
    forkable = cmd[:3] == [sys.executable, "-m", "snakemake"] and capture_output and text
    if not forkable or os.environ.get("LLMBUILD_TEST_NO_FORK") == "1":
        return subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            timeout=timeout,
            capture_output=capture_output,
            text=text,
            check=check,
        )
    path = _server()
    with tempfile.TemporaryDirectory(prefix="snakefork-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        request = {
            "argv": cmd[3:],
            "cwd": str(Path(cwd or os.getcwd()).resolve()),
            "env": dict(os.environ if env is None else env),
            "stdout": str(out),
            "stderr": str(err),
        }
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            conn.sendall(json.dumps(request).encode() + b"\n")
            reader = conn.makefile("r")
            pid = int(reader.readline())
            conn.settimeout(timeout)
            try:
                line = reader.readline()
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired(cmd, timeout) from None
        if not line:
            raise RuntimeError(f"the Snakemake fork server's child {pid} died: {request['argv']}")
        rc = int(line)
        proc = subprocess.CompletedProcess(cmd, rc, out.read_text(), err.read_text())
    if check:
        proc.check_returncode()
    return proc


def _server() -> str:
    with _LOCK:
        if _SERVER.get("proc") is None or _SERVER["proc"].poll() is not None:
            path = os.path.join(tempfile.mkdtemp(prefix="snakefork-"), "socket")
            proc = subprocess.Popen([sys.executable, __file__, path], stdin=subprocess.DEVNULL)
            deadline = time.time() + 120
            while not os.path.exists(path):
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the Snakemake fork server did not start")
                time.sleep(0.05)
            _SERVER.update(proc=proc, path=path)
            atexit.register(proc.kill)
        return _SERVER["path"]


def _serve(path: str) -> None:
    """The server: import Snakemake (and collect its plugins), then fork a child per request."""
    import snakemake.api  # noqa: F401
    import snakemake.cli
    import snakemake.dag  # noqa: F401
    import snakemake.utils  # noqa: F401
    from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry
    from snakemake_interface_storage_plugins.registry import StoragePluginRegistry

    ExecutorPluginRegistry()
    StoragePluginRegistry()
    try:
        from snakemake_interface_report_plugins.registry import ReportPluginRegistry

        ReportPluginRegistry()
    except ImportError:
        pass

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.replace(path + ".tmp", path)
    listener.listen(16)
    while True:
        conn, _ = listener.accept()
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(conn, snakemake.cli.main)
        conn.close()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


def _child(conn: socket.socket, main) -> None:
    rc = 1
    try:
        request = json.loads(conn.makefile("r").readline())
        conn.sendall(f"{os.getpid()}\n".encode())
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            f = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = ["snakemake", *request["argv"]]
        sys.path[0] = request["cwd"]  # as `python -m snakemake` run there has it
        try:
            main(request["argv"])
            rc = 0
        except SystemExit as exc:
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            rc = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(f"{rc}\n".encode())
    finally:
        os._exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1])
