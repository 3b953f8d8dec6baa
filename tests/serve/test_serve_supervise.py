"""`llmbuild serve run` process supervision, with a standard-library stand-in for vLLM.

The CLI runs in a subprocess (it installs signal handlers) with build_argv and check_device
patched to start tests/serve/fake_server.py; everything else is the real code path. The
driver records the command line vLLM would have got (FAKE_ARGV_FILE) and can read a given
/proc/cpuinfo text instead of this machine's (FAKE_CPUINFO).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmbuild.serve.endpoint import pid_alive, read_endpoint, wait_ready

pytestmark = pytest.mark.unit

FAKE = Path(__file__).with_name("fake_server.py")
DRIVER = """
import json
import os
import sys
from pathlib import Path
import llmbuild.serve.dtype as d
import llmbuild.serve.vllm as v
from llmbuild.cli import main

mode, grandchild = sys.argv[1], sys.argv[2]
v.STOP_GRACE_S = 3.0
v.check_device = lambda cfg: None
real_build_argv, real_cpu_features = v.build_argv, d.cpu_features
if os.environ.get("FAKE_CPUINFO"):
    text = Path(os.environ["FAKE_CPUINFO"]).read_text()
    d.cpu_features = lambda cpuinfo=None, arch=None: real_cpu_features(cpuinfo or text, arch=arch)

def fake_argv(cfg, host, port, python=None):
    if os.environ.get("FAKE_ARGV_FILE"):
        real = real_build_argv(cfg, host, port, python)
        Path(os.environ["FAKE_ARGV_FILE"]).write_text(json.dumps(real))
    argv = [sys.executable, {fake!r}, "--host", host, "--port", str(port), "--mode", mode]
    return argv + (["--grandchild", grandchild] if grandchild else [])

v.build_argv = fake_argv
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    return d


def start(tmp_path, model_dir, mode, *extra, grandchild="", env=None):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(fake=str(FAKE)))
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    argv = [sys.executable, str(driver), mode, grandchild, "serve", "run"]
    argv += ["--input", str(model_dir), "--endpoint", str(tmp_path / "ep.json"), *extra]
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def w8a8_dir(tmp_path):
    """A W8A8 model directory: config.json with llm-compressor's quantization_config."""
    d = tmp_path / "w8a8"
    d.mkdir()
    qc = json.loads((Path(__file__).with_name("quant_configs") / "w8a8.json").read_text())
    config = {"model_type": "llama", "dtype": "float32", "quantization_config": qc}
    (d / "config.json").write_text(json.dumps(config))
    (d / "tokenizer.json").write_text("{}")
    return d


def _cpuinfo(tmp_path, text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return str(path)


def test_ready_then_sigterm_stops_everything(tmp_path, model_dir):
    gc_file = tmp_path / "grandchild.pid"
    proc = start(tmp_path, model_dir, "ok", "--served-model-name", "tiny", grandchild=str(gc_file))
    try:
        ep = wait_ready(tmp_path / "ep.json", timeout=30, poll=0.1)
        assert ep.pid == proc.pid
        assert ep.model == "tiny"
        grandchild = int(gc_file.read_text())
        assert pid_alive(grandchild)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # a requested stop removes the service file (Snakemake's temporary output)
    assert not (tmp_path / "ep.json").exists()
    assert not pid_alive(grandchild), "the server's orphan survived"
    log = (tmp_path / "serve.log").read_text()
    assert "fake server mode ok" in log  # the server's output reaches our log
    assert "received SIGTERM" in log
    prov = json.loads((tmp_path / "ep.json.provenance.json").read_text())
    assert prov["command"] == "llmbuild serve run"
    assert str(model_dir) in prov["inputs"]


def test_sigint_also_exits_zero(tmp_path, model_dir):
    proc = start(tmp_path, model_dir, "ok")
    try:
        wait_ready(tmp_path / "ep.json", timeout=30, poll=0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_server_dying_early_is_one_line_with_its_last_line(tmp_path, model_dir):
    proc = start(tmp_path, model_dir, "exit")
    assert proc.wait(30) == 2
    lines = (tmp_path / "serve.log").read_text().splitlines()
    err = [ln for ln in lines if ln.startswith("llmbuild serve run: error:")]
    assert len(err) == 1
    assert "exited with code 3 before it was ready" in err[0]
    assert "pretend the model failed to load" in err[0]
    assert str(tmp_path / "serve.log") in err[0]  # names the log
    assert read_endpoint(tmp_path / "ep.json").state == "stopped"


def test_ready_timeout_kills_the_server(tmp_path, model_dir):
    gc_file = tmp_path / "grandchild.pid"
    t0 = time.monotonic()
    proc = start(tmp_path, model_dir, "never", "--ready-timeout", "2", grandchild=str(gc_file))
    assert proc.wait(40) == 2
    assert time.monotonic() - t0 < 30
    log = (tmp_path / "serve.log").read_text()
    assert "not ready after 2 s; stopped it" in log
    assert not pid_alive(int(gc_file.read_text()))


def test_server_dying_after_ready_exits_non_zero(tmp_path, model_dir):
    proc = start(tmp_path, model_dir, "ok")
    try:
        wait_ready(tmp_path / "ep.json", timeout=30, poll=0.1)
        server = [
            int(p)
            for p in os.listdir("/proc")
            if p.isdigit() and _ppid(int(p)) == proc.pid and _is_fake(int(p))
        ]
        assert len(server) == 1
        os.kill(server[0], signal.SIGKILL)
        assert proc.wait(30) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "exited by itself with code -9" in (tmp_path / "serve.log").read_text()


def test_missing_model_is_a_user_error(tmp_path):
    proc = start(tmp_path, tmp_path / "nope", "ok")
    assert proc.wait(30) == 2
    assert "does not exist" in (tmp_path / "serve.log").read_text()
    assert not (tmp_path / "ep.json").exists()


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _is_fake(pid: int) -> bool:
    try:
        return "fake_server.py" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False


def test_endpoint_records_resolved_dtype_and_log(tmp_path, w8a8_dir):
    from test_serve_dtype import SAPPHIRE_RAPIDS

    env = {
        "FAKE_CPUINFO": _cpuinfo(tmp_path, SAPPHIRE_RAPIDS),
        "FAKE_ARGV_FILE": str(tmp_path / "argv.json"),
    }
    proc = start(tmp_path, w8a8_dir, "ok", "--served-model-name", "tiny", env=env)
    try:
        ep = wait_ready(tmp_path / "ep.json", timeout=30, poll=0.1)
        assert ep.dtype == "bfloat16"
        assert ep.log == str(tmp_path / "serve.log")
        raw = json.loads((tmp_path / "ep.json").read_text())
        assert (raw["dtype"], raw["log"]) == ("bfloat16", str(tmp_path / "serve.log"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    log = (tmp_path / "serve.log").read_text()
    reason = "vLLM's int8 W8A8 kernel on this AMX CPU takes 16-bit activations"
    line = f"dtype bfloat16 for tiny: {reason}"
    assert line in log
    prov = json.loads((tmp_path / "ep.json.provenance.json").read_text())
    assert prov["dtype"] == "bfloat16"
    assert prov["dtype_reason"] == reason
    assert prov["cpu"] == {
        "model": "Intel(R) Xeon(R) Platinum 8480+",
        "arch": "x86_64",
        "has_amx": True,
        "has_avx512_bf16": True,
    }
    assert "'dtype': 'bfloat16'" in prov["arguments"]["config"]  # the resolved config
    assert prov["arguments"]["dtype"] == "auto"  # what was asked


def test_auto_without_amx_keeps_float32(tmp_path, w8a8_dir):
    from test_serve_dtype import AMD_EPYC

    env = {
        "FAKE_CPUINFO": _cpuinfo(tmp_path, AMD_EPYC),
        "FAKE_ARGV_FILE": str(tmp_path / "argv.json"),
    }
    proc = start(tmp_path, w8a8_dir, "ok", env=env)
    try:
        ep = wait_ready(tmp_path / "ep.json", timeout=30, poll=0.1)
        assert ep.dtype == "float32"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv[argv.index("--dtype") + 1] == "float32"
    prov = json.loads((tmp_path / "ep.json.provenance.json").read_text())
    assert prov["cpu"]["has_amx"] is False and prov["cpu"]["has_avx512_bf16"] is True


def test_pinned_float32_w8a8_on_amx_is_one_line_before_anything_starts(tmp_path, w8a8_dir):
    from test_serve_dtype import SAPPHIRE_RAPIDS

    env = {"FAKE_CPUINFO": _cpuinfo(tmp_path, SAPPHIRE_RAPIDS)}
    proc = start(tmp_path, w8a8_dir, "ok", "--dtype", "float32", env=env)
    assert proc.wait(30) == 2
    lines = (tmp_path / "serve.log").read_text().splitlines()
    assert lines == [
        f"llmbuild serve run: error: {w8a8_dir}: serve.dtype: float32 cannot serve this "
        "int8-w8a8 (compressed-tensors) variant on this CPU (Intel(R) Xeon(R) Platinum 8480+, "
        "x86_64, AMX): vLLM's int8 W8A8 kernel on this AMX CPU takes 16-bit activations; "
        "set serve.dtype to auto or bfloat16"
    ]
    assert not (tmp_path / "ep.json").exists()
    assert not (tmp_path / "ep.json.provenance.json").exists()
