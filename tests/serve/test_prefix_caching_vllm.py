"""Prefix caching on vs off, for real: the same tiny model served by vLLM (the serve-cpu
environment) with the cache on and then off, each measured by `llmbuild bench static` (the
bench environment) on prompts that share a 192-token prefix, as the sweeps scenario's
prefix_caching sweep does. With the cache on, TTFT p50 is lower and the server's own
counters show the prefix found; off, nothing is found.

Skipped unless both environments are built (.envs/serve-cpu, .envs/bench). Two cold starts
of vLLM: about 2.5 minutes on 2 cores, so it runs only with LLMBUILD_VLLM_SWEEP=1 (make test
stays within its budget; run it after changing the serve or bench stage).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmbuild.serve.endpoint import wait_ready

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVE = ROOT / ".envs/serve-cpu/bin/python"
BENCH = ROOT / ".envs/bench/bin/llmbuild"

if os.environ.get("LLMBUILD_VLLM_SWEEP") != "1":
    pytest.skip("set LLMBUILD_VLLM_SWEEP=1 to run (two vLLM cold starts)", allow_module_level=True)
if not SERVE.exists() or not BENCH.exists():
    pytest.skip("needs .envs/serve-cpu and .envs/bench (make envs)", allow_module_level=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prefix") / "tiny"
    subprocess.run(
        [str(SERVE), str(HERE / "serve_tiny_model.py"), str(out)],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return out


def measure(model: Path, tmp: Path, caching: bool) -> dict[str, str]:
    name = "on" if caching else "off"
    endpoint = tmp / f"{name}.json"
    argv = [str(SERVE), "-m", "llmbuild", "serve", "run", "--input", str(model)]
    argv += ["--endpoint", str(endpoint), "--served-model-name", "tiny", "--dtype", "float32"]
    argv += ["--max-model-len", "512", "--max-num-seqs", "4", "--kv-cache-space-gib", "0.25"]
    argv += ["--enforce-eager", "--ready-timeout", "400"]
    argv += ["--enable-prefix-caching" if caching else "--no-enable-prefix-caching"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(tmp / f"{name}.serve.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(endpoint, timeout=420)
        out = tmp / f"{name}.csv"
        bench = [str(BENCH), "bench", "static", "--endpoint", str(endpoint)]
        bench += ["--tokenizer", str(model), "--concurrency", "1", "--input-len", "224"]
        bench += ["--output-len", "4", "--prefix-len", "192", "--epochs", "16"]
        bench += ["--output", str(out), "--records", str(tmp / f"{name}.jsonl")]
        done = subprocess.run(bench, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        print(done.stdout.splitlines()[-3:], file=sys.stderr)
        (row,) = list(csv.DictReader(out.open()))
        return row
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prefix_caching_lowers_ttft_on_a_shared_prefix(tiny_model, tmp_path):
    on = measure(tiny_model, tmp_path, caching=True)
    off = measure(tiny_model, tmp_path, caching=False)
    ttft_on, ttft_off = float(on["median_ttft_ms"]), float(off["median_ttft_ms"])
    print(f"TTFT p50: cache on {ttft_on:.2f} ms, off {ttft_off:.2f} ms", file=sys.stderr)
    # the prefix is 192 of 224 tokens: most of each prompt is found in the cache
    assert float(on["prefix_cache_hit_rate"]) > 0.6
    assert not float(off["prefix_cache_hits"]) > 0  # 0, or no counter with the cache off
    assert ttft_on < ttft_off
    for row in (on, off):
        assert row["valid"] == "True" and row["failures"] == "0"
        assert row["total_output_tokens"] == str(16 * 4)
