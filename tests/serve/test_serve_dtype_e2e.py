"""A real vLLM service on a W8A8 (compressed-tensors int8) tiny Llama with `--dtype auto`.

The quantized model comes from the quantize environment (.envs/quantize, llm-compressor: our
`llmbuild quantize smoothquant`); the server from the serve-cpu environment. The dtype is what
choose_dtype says for this CPU (float32 on the oneDNN kernel without AMX, bfloat16 with AMX);
the test checks the endpoint file and the provenance record carry it, that vLLM got it
explicitly, and that a completion comes back. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmbuild.serve.dtype import choose_dtype, cpu_features
from llmbuild.serve.endpoint import wait_ready

# make test-full: the default graph's W8A8 service is checked the same way in tests/e2e/test_demo.py
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
QUANT_PYTHON = ROOT / ".envs" / "quantize" / "bin" / "python"

sys.path.insert(0, str(HERE))
from test_serve_e2e import _post, _serve_python  # noqa: E402


@pytest.fixture(scope="module")
def serve_python() -> str:
    return _serve_python()


@pytest.fixture(scope="module")
def w8a8_model(tmp_path_factory) -> Path:
    if not QUANT_PYTHON.exists():
        pytest.skip("no quantize environment at .envs/quantize (envs/quantize.txt)")
    out = tmp_path_factory.mktemp("w8a8")
    proc = subprocess.run(
        [str(QUANT_PYTHON), str(HERE / "quant_tiny_model.py"), str(out), "w8a8"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(json.loads(proc.stdout.strip().splitlines()[-1])["w8a8"])


def test_w8a8_serves_with_the_resolved_dtype(serve_python, w8a8_model, tmp_path):
    expected = choose_dtype("auto", w8a8_model, "cpu", cpu_features())
    endpoint = tmp_path / "endpoint.json"
    log_path = tmp_path / "serve.log"
    argv = [serve_python, "-m", "llmbuild", "serve", "run", "--input", str(w8a8_model)]
    argv += ["--endpoint", str(endpoint), "--served-model-name", "tiny-w8a8"]
    argv += ["--max-model-len", "256", "--max-num-seqs", "2", "--kv-cache-space-gib", "0.25"]
    argv += ["--enforce-eager", "--no-trust-remote-code", "--ready-timeout", "400"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            ep = wait_ready(endpoint, timeout=420)
        except Exception:
            print(log_path.read_text()[-4000:])
            raise
        assert ep.dtype == expected.dtype
        assert ep.log == str(log_path)
        body = {
            "model": "tiny-w8a8",
            "prompt": "The quick brown fox",
            "max_tokens": 8,
            "temperature": 0,
            "ignore_eos": True,
        }
        out = json.loads(_post(f"{ep.base_url}/completions", body))
        assert out["usage"]["completion_tokens"] == 8
        assert out["choices"][0]["text"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert f"dtype {expected.dtype} for tiny-w8a8: {expected.reason}" in text
    assert f"--dtype {expected.dtype}" in text  # the command line vLLM got
    assert f"dtype=torch.{expected.dtype}" in text  # what vLLM's engine took
    assert "Selected CPUInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8" in text
    prov = json.loads((tmp_path / "endpoint.json.provenance.json").read_text())
    assert prov["dtype"] == expected.dtype and prov["dtype_reason"] == expected.reason
    assert set(prov["cpu"]) == {"model", "arch", "has_amx", "has_avx512_bf16"}
