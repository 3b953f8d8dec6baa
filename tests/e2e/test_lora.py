"""Multi-LoRA end to end, as config/scenarios/lora.yaml builds it on the embedded default: two
adapters, each trained with megatron-core on its own synthetic task on a frozen checkpoint of
the default graph (train.lora.from), converted to PEFT adapters, served together with that
model by one vLLM service, each evaluated on its own task through the service (>= 0.9) and the
model they adapt on the same tasks (<= 0.1), and the LoRA-mix benchmark over the served names.

Only the LoRA part is built here: the targets below need that checkpoint of the default graph,
which test_demo's build (same config, same results/) already holds; run alone, this builds it
first. The LoRA scenario changes no key the default graph reads, so the default build stays up
to date.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

# slow (make test-full): two 1,000-step adapter trainings, their service and the LoRA-mix
# benchmark take about 10 minutes on 2 cores over the finished default
pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "results" / "tiny-llama"
CONFIGS = ["config/config.yaml", "config/scenarios/lora.yaml"]
SCENARIO = yaml.safe_load((ROOT / CONFIGS[1]).read_text())["train"]["lora"]
ADAPTERS = {a["name"]: a["task"] for a in SCENARIO["adapters"]}
BASE = SCENARIO.get("from", "pretrain")  # the served name of the model they adapt
TARGETS = [
    f"results/tiny-llama/eval/lora/{name}/{who}/accuracy.json"
    for name in ADAPTERS
    for who in ("adapter", "base")
] + ["results/tiny-llama/bench/lora/dynamic.csv"]


def snakemake(*args: str, timeout: int = 3600):
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", *args]
    cmd += ["--configfile", *CONFIGS, "--", *TARGETS]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def build():
    t0 = time.monotonic()
    proc = snakemake()
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    print(f"LoRA graph run: {time.monotonic() - t0:.0f} s")
    return proc


def accuracy(name: str, who: str) -> dict:
    return json.loads((MODEL / "eval/lora" / name / who / "accuracy.json").read_text())


def test_each_adapter_learns_its_task_and_the_base_does_not(build):
    lines = []
    for name, task in ADAPTERS.items():
        tuned, base = accuracy(name, "adapter"), accuracy(name, "base")
        lines.append(
            f"{name} ({task}): adapter {tuned['accuracy']:.3f}, base {base['accuracy']:.3f}"
        )
        assert tuned["model"] == name and base["model"] == BASE  # one service, by name
        assert tuned["n"] == base["n"] == 200
        assert tuned["failed_requests"] == base["failed_requests"] == 0
        assert tuned["accuracy"] >= 0.9, lines[-1]
        assert base["accuracy"] <= 0.1, lines[-1]
    print("held-out accuracy through the LoRA service: " + "; ".join(lines))


def test_adapters_were_trained_alone_and_converted_to_peft(build):
    for name in ADAPTERS:
        lora = MODEL / "lora" / name
        cfg = json.loads((lora / "mcore/lora_config.json").read_text())
        assert cfg["trained"]["from"] == f"results/tiny-llama/{BASE}/mcore"
        peft = json.loads((lora / "peft/adapter_config.json").read_text())
        assert peft["r"] == cfg["r"] and peft["lora_alpha"] == cfg["alpha"]
        assert set(peft["target_modules"]) == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }
        # the adapter is small next to the model it adapts
        size = (lora / "peft/adapter_model.safetensors").stat().st_size
        assert size < 0.2 * (MODEL / BASE / "hf/model.safetensors").stat().st_size
        verdict = json.loads((MODEL / f"gates/train/lora-{name}.json").read_text())
        assert verdict["status"] == "pass"
    log = (ROOT / "logs/tiny-llama/serve/lora/eval.log").read_text()
    for name in ADAPTERS:
        assert "--lora-modules" in log and f"{name}=results/tiny-llama/lora/{name}/peft" in log


def test_lora_mix_benchmark(build):
    with open(MODEL / "bench/lora/dynamic.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    mix = ",".join(f"{n}=1" for n in [*ADAPTERS, BASE])
    assert rows and all(r["lora_mix"] == mix for r in rows)
    for r in rows:
        assert int(r["failures"]) == 0 and r["valid"] == "True", r
        assert float(r["output_throughput"]) > 0
    records = [json.loads(x) for x in (MODEL / "bench/lora/dynamic.jsonl").read_text().splitlines()]
    served = {r["model"] for r in records if "model" in r}
    assert served == {*ADAPTERS, BASE}, served
    assert all(r["success"] for r in records if "success" in r)


def test_noop_rerun(build):
    proc = snakemake("-n", timeout=600)
    assert "Nothing to be done" in proc.stdout + proc.stderr
