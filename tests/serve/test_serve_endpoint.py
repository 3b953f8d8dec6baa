"""The endpoint file and wait_ready, against a standard-library HTTP server."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from llmbuild.errors import UserError
from llmbuild.serve.endpoint import (
    Endpoint,
    free_port,
    pid_alive,
    read_endpoint,
    wait_ready,
    write_endpoint,
)
from llmbuild.serve.vllm import ServeConfig, check_device

pytestmark = pytest.mark.unit


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_round_trip_and_shape(tmp_path):
    ep = Endpoint.make(state="starting", host="127.0.0.1", port=8001, model="tiny", pid=42)
    path = tmp_path / "svc" / "endpoint.json"
    write_endpoint(path, ep)
    assert json.loads(path.read_text()) == {
        "state": "starting",
        "base_url": "http://127.0.0.1:8001/v1",
        "host": "127.0.0.1",
        "port": 8001,
        "model": "tiny",
        "pid": 42,
        "log": None,
        "dtype": None,
    }
    assert read_endpoint(path) == ep
    full = Endpoint.make(
        state="ready", host="127.0.0.1", port=1, model="m", pid=1, log="/l", dtype="bfloat16"
    )
    write_endpoint(path, full)
    assert read_endpoint(path) == full
    assert ep.with_state("ready").state == "ready"
    assert ep.root_url == "http://127.0.0.1:8001"
    assert [p.name for p in path.parent.iterdir()] == ["endpoint.json"]  # no temp left


def test_bad_files_fail_in_one_line(tmp_path):
    with pytest.raises(UserError, match="no endpoint file"):
        read_endpoint(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"state": "ready"}')
    with pytest.raises(UserError, match="lacks base_url, host, port, model, pid"):
        read_endpoint(bad)
    bad.write_text(
        json.dumps({"state": "up", "base_url": "u", "host": "h", "port": 1, "model": "m", "pid": 1})
    )
    with pytest.raises(UserError, match="unknown state 'up'"):
        read_endpoint(bad)


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert 0 < port < 65536


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())
    assert not pid_alive(0)


def test_wait_ready_returns_when_ready_and_healthy(tmp_path, health_server):
    path = tmp_path / "ep.json"
    ep = Endpoint.make(
        state="starting", host="127.0.0.1", port=health_server, model="m", pid=os.getpid()
    )
    write_endpoint(path, ep)

    def later():
        time.sleep(0.6)
        write_endpoint(path, ep.with_state("ready"))

    threading.Thread(target=later, daemon=True).start()
    t0 = time.monotonic()
    got = wait_ready(path, timeout=10, poll=0.1)
    assert got.state == "ready"
    assert got.base_url == f"http://127.0.0.1:{health_server}/v1"
    assert 0.5 <= time.monotonic() - t0 < 5


def test_wait_ready_times_out_without_a_file(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"not ready after 0.5 s \(no endpoint file yet\)"):
        wait_ready(tmp_path / "never.json", timeout=0.5, poll=0.1)
    assert time.monotonic() - t0 < 3


def test_wait_ready_times_out_when_health_never_answers(tmp_path):
    path = tmp_path / "ep.json"
    port = free_port()  # nothing listens there
    write_endpoint(
        path, Endpoint.make(state="ready", host="127.0.0.1", port=port, model="m", pid=os.getpid())
    )
    with pytest.raises(UserError, match="/health not answering"):
        wait_ready(path, timeout=0.5, poll=0.1)


def test_wait_ready_fails_fast_when_the_service_is_gone(tmp_path, health_server):
    path = tmp_path / "ep.json"
    ep = Endpoint.make(state="starting", host="127.0.0.1", port=health_server, model="m", pid=1)
    write_endpoint(path, Endpoint(**{**ep.__dict__, "pid": dead_pid()}))
    t0 = time.monotonic()
    with pytest.raises(UserError, match="is gone"):
        wait_ready(path, timeout=30, poll=0.1)
    assert time.monotonic() - t0 < 2
    write_endpoint(path, ep.with_state("stopped"))
    with pytest.raises(UserError, match="state 'stopped'"):
        wait_ready(path, timeout=30, poll=0.1)


def test_npu_without_the_ascend_stack_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("torch_npu") and importlib.util.find_spec("vllm_ascend"):
        pytest.skip("the Ascend stack is installed here")
    with pytest.raises(UserError, match="device npu needs torch_npu and vllm-ascend"):
        check_device(ServeConfig(model="/m", device="npu"))


def test_cuda_without_a_gpu_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(UserError, match="vLLM is not installed"):
            check_device(ServeConfig(model="/m", device="cuda"))
        return
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(UserError, match="no CUDA device visible"):
        check_device(ServeConfig(model="/m", device="cuda"))
