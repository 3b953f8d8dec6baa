"""A PEFT adapter from `llmbuild convert lora2hf` served by real vLLM: same greedy tokens as PEFT.

A random Megatron LoRA (B not zero) on a tiny random Llama is converted with the real CLI
(train env), served with `llmbuild serve run --lora-module` (vLLM from .envs/serve-cpu), and
asked for greedy completions by the adapter's name. The tokens must equal PEFT's greedy tokens
on the same base (train env) and differ from the base model's, which vLLM must also reproduce.
Skipped when vLLM, or torch + peft in .envs/train, is missing. About 1.5 minutes on 2 cores
(one server start; PEFT's reference runs while vLLM starts).
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

from llmbuild.errors import UserError
from llmbuild.serve.endpoint import Endpoint, wait_ready
from llmbuild.serve.vllm import descendants, kill_leftovers

# make test-full: two vLLM starts (about 3 minutes on 2 cores); the LoRA service of the graph:
# tests/e2e/test_lora.py (make test-pending)
pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ADAPTER = "sft"  # the name vLLM serves the adapter under
BASE = "tiny"
RANK, ALPHA = 8, 16.0
NEW_TOKENS = 16
PROMPTS = ["The quick brown fox", "What is the capital of France?", "def add(a, b):"]


def _probe(python: str | Path, *modules: str) -> bool:
    check = " and ".join(f"importlib.util.find_spec({m!r}) is not None" for m in modules)
    probe = f"import importlib.util, sys; sys.exit(not ({check}))"
    run = subprocess.run
    return Path(python).exists() and run([python, "-c", probe], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def serve_python() -> str:
    for python in (sys.executable, str(ROOT / ".envs" / "serve-cpu" / "bin" / "python")):
        if _probe(python, "vllm"):
            return python
    pytest.skip("vLLM is not importable here nor in .envs/serve-cpu (envs/serve-cpu.txt)")


@pytest.fixture(scope="module")
def train_python() -> str:
    python = str(ROOT / ".envs" / "train" / "bin" / "python")
    if not _probe(python, "torch", "peft", "safetensors"):
        pytest.skip("torch, peft and safetensors are not importable in .envs/train")
    return python


def _run(argv: list[str], what: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    env["PYTHONWARNINGS"] = "ignore"
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, f"{what} failed:\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def models(serve_python, train_python, tmp_path_factory) -> tuple[Path, Path]:
    """(tiny base model, PEFT adapter converted from a random Megatron LoRA by the CLI)."""
    d = tmp_path_factory.mktemp("lora_vllm")
    base, mlora, peft = d / "base", d / "megatron_lora", d / "peft"
    _run([serve_python, str(HERE / "serve_tiny_model.py"), str(base)], "tiny model")
    helper = str(HERE / "lora_reference.py")
    argv = [train_python, helper, "megatron-lora", str(base), str(mlora)]
    _run(argv + ["--r", str(RANK), "--alpha", str(ALPHA)], "megatron LoRA")
    argv = [train_python, "-m", "llmbuild", "convert", "lora2hf", "--input", str(mlora)]
    _run(argv + ["--base", str(base), "--output", str(peft)], "llmbuild convert lora2hf")
    return base, peft


class _Server:
    """`llmbuild serve run` with the adapter, started and not yet waited for."""

    def __init__(self, python: str, base: Path, peft: Path, workdir: Path):
        self.endpoint = workdir / "endpoint.json"
        self.log = workdir / "serve.log"
        argv = [python, "-m", "llmbuild", "serve", "run", "--input", str(base)]
        argv += ["--endpoint", str(self.endpoint), "--served-model-name", BASE]
        argv += ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "4"]
        argv += ["--kv-cache-space-gib", "0.25", "--enforce-eager", "--ready-timeout", "400"]
        argv += ["--lora-module", f"{ADAPTER}={peft}", "--max-lora-rank", str(RANK)]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def ready(self, timeout: float = 420) -> Endpoint:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                return wait_ready(self.endpoint, timeout=5)
            except UserError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vLLM not ready after {timeout:g} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        tree = descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the supervisor stops vLLM's processes
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_leftovers(tree)


@pytest.fixture(scope="module")
def server(serve_python, models, tmp_path_factory):
    srv = _Server(serve_python, *models, tmp_path_factory.mktemp("lora_vllm_serve"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def reference(train_python, models, server) -> dict:
    """PEFT's greedy tokens (and the base model's), computed while vLLM starts."""
    base, peft = models
    argv = [train_python, str(HERE / "lora_reference.py"), "greedy", str(base), str(peft)]
    out = _run(argv + ["--new-tokens", str(NEW_TOKENS), *PROMPTS], "PEFT reference")
    return json.loads(out)


def _greedy(ep: Endpoint, model: str, prompts: list[list[int]]) -> list[list[int]]:
    body = {
        "model": model,
        "prompt": prompts,  # token ids: no tokenizer difference between the envs
        "max_tokens": NEW_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    req = urllib.request.Request(
        f"{ep.base_url}/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        choices = json.loads(resp.read())["choices"]
    return [c["token_ids"] for c in sorted(choices, key=lambda c: c["index"])]


def test_vllm_serves_converted_adapter_like_peft(server, reference):
    ep = server.ready()
    with urllib.request.urlopen(f"{ep.base_url}/models", timeout=30) as resp:
        assert {m["id"] for m in json.loads(resp.read())["data"]} == {BASE, ADAPTER}

    prompts = reference["prompt_ids"]
    want_base, want_lora = reference["base"], reference["lora"]
    # exact token equality is well posed only away from near ties (vLLM's float32 logits
    # differ from transformers' by ~1e-6)
    margins = f"smallest top-1/top-2 logit gaps: {reference['base_margin']:.2g} (base), "
    margins += f"{reference['lora_margin']:.2g} (PEFT)"
    for b, lo in zip(want_base, want_lora, strict=True):
        assert b != lo, "the adapter does not change PEFT's greedy tokens: a useless check"

    got_lora = _greedy(ep, ADAPTER, prompts)
    got_base = _greedy(ep, BASE, prompts)
    assert all(len(t) == NEW_TOKENS for t in got_lora + got_base)
    assert got_base == want_base, f"vLLM's base model differs from transformers; {margins}"
    for got, base in zip(got_lora, got_base, strict=True):
        assert got != base, "vLLM ignored the adapter"
    assert got_lora == want_lora, f"vLLM with the adapter differs from PEFT; {margins}"
