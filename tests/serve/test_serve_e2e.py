"""A real vLLM service on a tiny random Llama: chat completion, streaming usage, clean stop.

Runs with the interpreter that has vLLM: this one, or the serve-cpu environment at
.envs/serve-cpu (built from envs/serve-cpu.txt); skipped when neither has it. About a
minute on 2 cores (imports dominate; --enforce-eager skips torch.compile).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llmbuild.serve.endpoint import pid_alive, wait_ready
from llmbuild.serve.vllm import descendants

# make test-full: the default graph's services chat (evaluation), stream (benchmarks) and stop
# with the run (tests/e2e/test_demo.py)
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _has_vllm(python: str) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


def _serve_python() -> str:
    for python in (sys.executable, str(ROOT / ".envs" / "serve-cpu" / "bin" / "python")):
        if Path(python).exists() and _has_vllm(python):
            return python
    pytest.skip("vLLM is not importable here nor in .envs/serve-cpu (envs/serve-cpu.txt)")


@pytest.fixture(scope="module")
def serve_python() -> str:
    return _serve_python()


@pytest.fixture(scope="module")
def tiny_model(serve_python, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "tiny"
    subprocess.run(
        [serve_python, str(HERE / "serve_tiny_model.py"), str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return out


def _post(url: str, body: dict, timeout: float = 60) -> bytes:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def test_tiny_service_chats_streams_and_stops_cleanly(serve_python, tiny_model, tmp_path):
    endpoint = tmp_path / "endpoint.json"
    log_path = tmp_path / "serve.log"
    argv = [serve_python, "-m", "llmbuild", "serve", "run", "--input", str(tiny_model)]
    argv += ["--endpoint", str(endpoint), "--served-model-name", "tiny", "--dtype", "float32"]
    argv += ["--max-model-len", "512", "--max-num-seqs", "4", "--kv-cache-space-gib", "0.25"]
    argv += ["--enforce-eager", "--ready-timeout", "400"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    tree: dict[int, str] = {}
    try:
        try:
            ep = wait_ready(endpoint, timeout=420)
        except Exception:
            print(log_path.read_text()[-3000:])
            raise
        assert ep.model == "tiny" and ep.pid == proc.pid
        tree = descendants(proc.pid)
        assert len(tree) >= 2  # the API server and its engine

        with urllib.request.urlopen(f"{ep.base_url}/models", timeout=30) as resp:
            assert [m["id"] for m in json.loads(resp.read())["data"]] == ["tiny"]

        chat = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "What is 2 + 3?"}],
            "max_tokens": 12,
            "temperature": 0,
            "ignore_eos": True,
        }
        first = json.loads(_post(f"{ep.base_url}/chat/completions", chat))
        again = json.loads(_post(f"{ep.base_url}/chat/completions", chat))
        assert first["usage"]["completion_tokens"] == 12  # ignore_eos + max_tokens
        assert first["choices"][0]["finish_reason"] == "length"
        answer = first["choices"][0]["message"]["content"]
        assert answer == again["choices"][0]["message"]["content"]  # temperature 0

        stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        events = [
            json.loads(line[len(b"data: ") :])
            for line in _post(f"{ep.base_url}/chat/completions", stream).splitlines()
            if line.startswith(b"data: {")
        ]
        deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
        assert "".join(d.get("content") or "" for d in deltas) == answer
        assert events[-1]["usage"]["completion_tokens"] == 12

        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(60) == 0
        assert time.monotonic() - t0 < 40
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not endpoint.exists()
    time.sleep(1)
    left = [pid for pid in tree if pid_alive(pid)]
    assert left == [], f"orphaned vLLM processes: {left}"
