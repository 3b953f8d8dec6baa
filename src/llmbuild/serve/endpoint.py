"""The service endpoint file: how consumers find a running vLLM service and wait for it.

Standard library only (urllib, json, socket), so a benchmark or evaluation step in any
environment can import it without vLLM. The file is a Snakemake ``service()`` output:

    {"state": "starting"|"ready"|"stopped", "base_url": "http://127.0.0.1:PORT/v1",
     "host": "127.0.0.1", "port": PORT, "model": "<served model name>", "pid": <service pid>,
     "log": "<the service's log file, absolute>" | null, "dtype": "<served dtype>" | null}

``pid`` is the ``llmbuild serve run`` process, which lives exactly as long as the service.
``log`` lets a consumer quote the server's root-cause line when requests fail; ``dtype`` is
the dtype the server was started with (chosen per variant and device, see serve/vllm.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from llmbuild.atomic import atomic_file
from llmbuild.errors import UserError

STATES = ("starting", "ready", "stopped")
_KEYS = ("state", "base_url", "host", "port", "model", "pid")
_OPTIONAL = ("log", "dtype")


@dataclass(frozen=True)
class Endpoint:
    state: str
    base_url: str
    host: str
    port: int
    model: str
    pid: int
    log: str | None = None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise UserError(
                f"unknown state {self.state!r}; expected one of {STATES}", field="state"
            )
        if not (0 < int(self.port) < 65536):
            raise UserError(f"port {self.port} is out of range 1..65535", field="port")

    @property
    def root_url(self) -> str:
        """The server's root (base_url without the /v1 suffix), where /health lives."""
        return f"http://{self.host}:{self.port}"

    @classmethod
    def make(
        cls,
        *,
        state: str,
        host: str,
        port: int,
        model: str,
        pid: int,
        log: str | None = None,
        dtype: str | None = None,
    ) -> Endpoint:
        return cls(
            state=state,
            base_url=f"http://{host}:{port}/v1",
            host=host,
            port=port,
            model=model,
            pid=pid,
            log=log,
            dtype=dtype,
        )

    def with_state(self, state: str) -> Endpoint:
        return Endpoint(**{**asdict(self), "state": state})


def write_endpoint(path: str | os.PathLike[str], ep: Endpoint) -> None:
    """Write (or rewrite) the endpoint file atomically: readers never see half a file."""
    with atomic_file(path) as fh:
        json.dump(asdict(ep), fh, indent=2)
        fh.write("\n")


def read_endpoint(path: str | os.PathLike[str]) -> Endpoint:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(
            "no endpoint file; start the service with `llmbuild serve run`", path=path
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read endpoint JSON: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise UserError("endpoint file is not a JSON object", path=path)
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise UserError(f"endpoint file lacks {', '.join(missing)}", path=path)
    try:
        return Endpoint(**{k: data[k] for k in _KEYS}, **{k: data.get(k) for k in _OPTIONAL})
    except UserError as exc:
        raise UserError(str(exc), path=path) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_healthy(root_url: str, timeout: float = 2.0) -> bool:
    """GET <root>/health answers 200."""
    try:
        with urllib.request.urlopen(f"{root_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone all the same.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def wait_ready(
    endpoint_path: str | os.PathLike[str], timeout: float, *, poll: float = 0.5
) -> Endpoint:
    """Wait until the endpoint file says ready and the server answers /health.

    Fails with one line on timeout, or as soon as the service process is gone or stopped.
    """
    if timeout <= 0:
        raise UserError(f"timeout must be > 0 seconds, got {timeout}", field="timeout")
    deadline = time.monotonic() + timeout
    last = "no endpoint file yet"
    while True:
        if Path(endpoint_path).exists():
            ep = read_endpoint(endpoint_path)
            if ep.state == "stopped" or not pid_alive(ep.pid):
                raise UserError(
                    f"service process {ep.pid} is gone (state {ep.state!r}); see its log",
                    path=endpoint_path,
                )
            if ep.state == "ready" and is_healthy(ep.root_url):
                return ep
            last = f"state {ep.state!r}, {ep.root_url}/health not answering"
        if time.monotonic() >= deadline:
            raise UserError(
                f"service not ready after {timeout:g} s ({last}); raise --timeout or see the "
                "service log",
                path=endpoint_path,
            )
        time.sleep(poll)
