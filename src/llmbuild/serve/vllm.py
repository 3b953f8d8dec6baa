"""Run vLLM's OpenAI-compatible server as a child process and supervise it.

``run_service`` owns the process: it checks the paths and the device, resolves the dtype,
writes the endpoint file ("starting", then "ready", with the served dtype and the log file),
starts the server with ``build_argv``'s command line (serve/config.py), and on
SIGTERM/SIGINT stops it and every process it started, so `exec llmbuild serve run ...` as a
Snakemake service leaves no orphan. Only the standard library is imported here (and the
config schema, for the knobs' choices); vLLM runs in the child.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO

from llmbuild.errors import UserError
from llmbuild.serve import dtype as dtypes
from llmbuild.serve.config import (
    ServeConfig,
    build_argv,
    check_paths,
    child_env,
    resolve_dtype,
)
from llmbuild.serve.endpoint import Endpoint, free_port, is_healthy, write_endpoint

STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


# --- checks that touch the environment ---------------------------------------------------


def check_device(cfg: ServeConfig) -> None:
    """Fail early, in one line, when this environment cannot serve on ``cfg.device``."""
    if cfg.device == "npu":
        missing = [m for m in ("torch_npu", "vllm_ascend") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f"device npu needs torch_npu and vllm-ascend, missing here: {', '.join(missing)} "
                f"(python {sys.executable}); install the Ascend stack or use --device cpu",
                field="device",
            )
    if importlib.util.find_spec("vllm") is None:
        env = "envs/serve-cpu.txt" if cfg.device == "cpu" else "envs/serve-vllm.txt"
        raise UserError(
            f"vLLM is not installed in this environment ({sys.executable}); build it from {env}",
            field="device",
        )
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"device cuda: no CUDA device visible (torch {torch.__version__}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}); "
                "run on a GPU node or use --device cpu",
                field="device",
            )
        count = torch.cuda.device_count()
    elif cfg.device == "npu":
        import torch
        import torch_npu  # noqa: F401  (registers torch.npu)

        count = torch.npu.device_count()  # type: ignore[attr-defined]
        if count == 0:
            raise UserError("device npu: no Ascend NPU visible; run on an NPU node", field="device")
    else:
        return
    if count < cfg.tensor_parallel_size:
        raise UserError(
            f"tensor_parallel_size {cfg.tensor_parallel_size} needs that many {cfg.device} "
            f"devices, {count} visible",
            field="tensor_parallel_size",
        )


# --- process supervision ------------------------------------------------------------------


class Stopped(Exception):
    """Raised in the main thread by the SIGTERM/SIGINT/SIGHUP handler."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log_file() -> str | None:
    """The log file our stdout (else stderr) is redirected to, absolute; None for a terminal."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("/") and Path(target).is_file():
                return target
    return None


def output_location() -> str:
    """Where our output goes: the log file a rule redirects it to, if there is one."""
    return log_file() or "the output above"


def _die_with_parent(parent: int, unblock: Iterable[int]) -> Callable[[], None]:
    """preexec_fn: the child gets SIGTERM if we die (even by SIGKILL), so it never orphans."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, unblock)
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def _become_subreaper() -> None:
    """Orphans of the server (engine, workers) are re-parented to us, so we can end them."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) for every process, from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            rest = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            table[int(entry.name)] = (int(rest[1]), rest[19])
    return table


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root``: pid -> start time (to tell a reused pid apart)."""
    table = _proc_table()
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (ppid, _) in table.items():
        children[ppid].append(pid)
    out: dict[int, str] = {}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid not in out:
            out[pid] = table[pid][1]
            stack.extend(children.get(pid, ()))
    return out


def _alive_same(pid: int, start: str) -> bool:
    with contextlib.suppress(OSError, IndexError):
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rest[19] == start and rest[0] != "Z"
    return False


def kill_leftovers(procs: Mapping[int, str], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` s, whatever of ``procs`` still runs."""
    alive = [p for p, s in procs.items() if _alive_same(p, s)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in alive if _alive_same(p, procs[p])]
    return alive


class _Tee(threading.Thread):
    """Copies the server's output to ``sink`` line by line and keeps the last lines."""

    def __init__(self, source: IO[bytes], sink: IO[bytes] | None, keep: int = 40):
        super().__init__(name="vllm-output", daemon=True)
        self.source, self.sink = source, sink
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)

    def run(self) -> None:
        for line in iter(self.source.readline, b""):
            self.tail.append(line.decode(errors="replace").rstrip())
            if self.sink is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.sink.write(line)
                    self.sink.flush()

    def last_line(self) -> str:
        for line in reversed(self.tail):
            if line.strip():
                return line.strip()
        return "<no output>"


def _stop_child(child: subprocess.Popen[bytes], log: Callable[[str], None]) -> None:
    """SIGTERM the server, SIGKILL it after STOP_GRACE_S, then end whatever it left behind."""
    tree = descendants(child.pid)
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log(f"vLLM server did not stop within {STOP_GRACE_S:g} s; killing it")
            child.kill()
            child.wait()
    tree.update(descendants(os.getpid()))  # orphans re-parented to us (subreaper)
    left = kill_leftovers(tree)
    _reap()
    if left:
        log(f"could not end processes {left} left by the vLLM server")


def run_service(
    cfg: ServeConfig,
    endpoint_path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    sink: IO[bytes] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    on_ready: Callable[[Endpoint], None] | None = None,
    poll: float = 0.5,
    dtype_choice: dtypes.DtypeChoice | None = None,
) -> int:
    """Serve ``cfg`` until SIGTERM/SIGINT (returns 0) or until the server dies (UserError).

    The dtype is resolved first (``dtype_choice`` when the caller already did, see
    resolve_dtype) and passed to vLLM explicitly; the endpoint file records it and the log
    file. The endpoint file says "starting" at once and "ready" once GET /health answers. A
    requested stop removes it (it is a Snakemake service output: a file left behind, newer than
    the consumers' results, would make the next run redo them); a server that fails leaves it
    "stopped", so waiting consumers fail at once. The server's output is copied to ``sink``.
    """
    check_paths(cfg)
    check_device(cfg)
    if dtype_choice is None:
        cfg, dtype_choice = resolve_dtype(cfg)
    else:
        cfg = replace(cfg, dtype=dtype_choice.dtype)
    log(f"dtype {cfg.dtype} for {cfg.served_name}: {dtype_choice.reason}")
    log_path = log_file()
    where = log_path or "the output above"
    hit: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not hit:  # the first one stops us; later ones must not break the cleanup
            hit.append(signum)
            raise Stopped(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    child: subprocess.Popen[bytes] | None = None
    tee: _Tee | None = None
    ep: Endpoint | None = None
    requested_stop = False
    try:
        port = free_port(host)
        ep = Endpoint.make(
            state="starting",
            host=host,
            port=port,
            model=cfg.served_name,
            pid=os.getpid(),
            log=log_path,
            dtype=cfg.dtype,
        )
        write_endpoint(endpoint_path, ep)
        argv = build_argv(cfg, host, port)
        log(f"starting vLLM on {host}:{port}: {' '.join(argv)}")
        started = time.monotonic()
        _become_subreaper()
        # A signal between fork and `child = ...` would lose the child: hold signals until
        # the name is bound (the child unblocks them for itself before exec).
        signal.pthread_sigmask(signal.SIG_BLOCK, handled)
        try:
            child = subprocess.Popen(
                argv,
                env=child_env(cfg, os.environ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(os.getpid(), handled),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        assert child.stdout is not None
        tee = _Tee(child.stdout, sink)
        tee.start()
        while not is_healthy(ep.root_url):
            rc = child.poll()
            if rc is not None:
                tee.join(5)
                raise UserError(
                    f"vLLM server exited with code {rc} before it was ready "
                    f"(last line: {tee.last_line()}); see {where}",
                    path=cfg.model,
                )
            if time.monotonic() - started > cfg.ready_timeout:
                raise UserError(
                    f"vLLM server not ready after {cfg.ready_timeout:g} s; stopped it "
                    f"(last line: {tee.last_line()}); see {where} or raise --ready-timeout",
                    path=cfg.model,
                )
            time.sleep(poll)
        ep = ep.with_state("ready")
        write_endpoint(endpoint_path, ep)
        log(f"ready after {time.monotonic() - started:.1f} s at {ep.base_url} (model {ep.model})")
        if on_ready is not None:
            on_ready(ep)
        rc = child.wait()
        tee.join(5)
        raise UserError(
            f"vLLM server exited by itself with code {rc} (last line: {tee.last_line()}); "
            f"see {where}",
            path=cfg.model,
        )
    except Stopped as stop:
        log(f"received {stop}: stopping the vLLM server")
        requested_stop = True
        return 0
    finally:
        for s in handled:  # a second signal must not break the cleanup
            signal.signal(s, signal.SIG_IGN)
        if child is not None:
            _stop_child(child, log)
        if tee is not None:
            tee.join(5)
        if ep is not None:
            with contextlib.suppress(OSError):
                if requested_stop:
                    os.unlink(endpoint_path)
                else:
                    write_endpoint(endpoint_path, ep.with_state("stopped"))
        for s, h in previous.items():
            signal.signal(s, h)
