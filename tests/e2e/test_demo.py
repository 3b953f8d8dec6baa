"""The whole graph on the embedded default, as `make demo` runs it, with the figures asserted.

Runs in the repository (results/ is git-ignored); an up-to-date build is reused, so after
`make demo` this checks the finished build, and on a clean clone it builds everything.
"""

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "results" / "tiny-llama"


def snakemake(*args, timeout=5400):
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def build():
    proc = snakemake()
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc


def accuracy(variant):
    return json.loads((MODEL / "eval" / variant / "accuracy.json").read_text())


def test_accuracy_through_the_service(build):
    sft, base, w8a8 = accuracy("sft"), accuracy("base"), accuracy("sft-w8a8")
    print(
        f"accuracy: base {base['accuracy']:.3f}, sft {sft['accuracy']:.3f}, "
        f"sft-w8a8 {w8a8['accuracy']:.3f} on {sft['n']} held-out examples"
    )
    assert sft["n"] == base["n"] == w8a8["n"] == 200
    assert sft["accuracy"] >= 0.90
    assert base["accuracy"] <= 0.10
    assert abs(w8a8["accuracy"] - sft["accuracy"]) <= 0.05
    summary = json.loads((MODEL / "eval" / "summary.json").read_text())
    assert summary["sft"]["accuracy"] == sft["accuracy"]


def test_static_benchmark_csvs(build):
    assert not (MODEL / "bench" / "base").exists()  # bench.variants: the trained ones
    for variant in ("sft", "sft-w8a8"):
        with open(MODEL / "bench" / variant / "static.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["concurrency"]) for r in rows] == [1, 2, 4]
        for r in rows:
            assert int(r["failures"]) == 0
            assert 0 < float(r["p90_ttft_ms"]) < 60_000
            assert float(r["output_throughput"]) > 0
            assert float(r["mean_tpot_ms"]) > 0
            # the graph passes plot.slo_* as the benchmark's SLOs: goodput is a number
            assert math.isfinite(float(r["request_goodput"])), r
            assert 0 <= float(r["slo_attainment"]) <= 1
            assert r["valid"] == "True"


def test_every_gate_passed_and_the_report_table_lists_them(build):
    summary = json.loads((MODEL / "gates" / "summary.json").read_text())
    verdicts = summary["verdicts"]
    assert {v["status"] for v in verdicts} == {"pass"}, [
        (v["gate"], v["subject"], v["status"], v["detail"])
        for v in verdicts
        if v["status"] != "pass"
    ]
    gates = {(v["gate"], v["subject"]) for v in verdicts}
    assert {("parity", "base hf2mg"), ("parity", "sft mg2hf")} <= gates
    assert {
        ("train_loss", "pretrain"),
        ("train_loss", "sft"),
        ("quant_accuracy", "sft-w8a8"),
    } <= gates
    for v in verdicts:
        if v["gate"] == "parity":  # float32: 1e-5 of the logits' scale
            scale = max(1.0, v["figures"]["logits_max_abs"])
            assert v["figure"] <= v["threshold"] == pytest.approx(1e-5 * scale)
    html = (MODEL / "gates" / "summary.html").read_text()
    assert html.count("<tr>") == len(verdicts) + 1


def test_serving_dtype_and_prefix_caching_reach_vllm(build):
    summary = json.loads((MODEL / "eval" / "summary.json").read_text())
    # the tiny model is float32; a quantized variant gets what its kernels take on this CPU
    assert summary["base"]["served_dtype"] == summary["sft"]["served_dtype"] == "float32"
    assert summary["sft-w8a8"]["served_dtype"] in ("float32", "bfloat16")
    for variant in ("base", "sft", "sft-w8a8"):
        log = (ROOT / "logs/tiny-llama/serve" / variant / "eval.log").read_text()
        # serve.enable_prefix_caching: false reaches vLLM as off (its own default is on)
        assert "'enable_prefix_caching': False" in log, variant
        assert f"--dtype {summary[variant]['served_dtype']}" in log
    # the W8A8 service: the dtype this CPU's int8 kernel takes (bfloat16 with AMX), recorded
    # with its reason and the CPU's flags, and vLLM's engine on that kernel
    from llmbuild.serve.dtype import choose_dtype, cpu_features

    w8a8 = MODEL / "sft" / "quant" / "w8a8"
    expected = choose_dtype("auto", w8a8, "cpu", cpu_features())
    prov = json.loads((MODEL / "serve/sft-w8a8/eval.json.provenance.json").read_text())
    assert (prov["dtype"], prov["dtype_reason"]) == (expected.dtype, expected.reason)
    assert set(prov["cpu"]) == {"model", "arch", "has_amx", "has_avx512_bf16"}
    log = (ROOT / "logs/tiny-llama/serve/sft-w8a8/eval.log").read_text()
    assert f"dtype=torch.{expected.dtype}" in log
    assert "Selected CPUInt8ScaledMMLinearKernel for CompressedTensorsW8A8Int8" in log


def test_training_logs_show_learning(build):
    for phase in ("pretrain", "sft"):
        lines = (MODEL / phase / "train_log.jsonl").read_text().splitlines()
        steps = [json.loads(x) for x in lines]
        assert steps[-1]["step"] == len(steps)
        head = sum(s["loss"] for s in steps[:10]) / 10
        tail = sum(s["loss"] for s in steps[-10:]) / 10
        assert tail < 0.7 * head, (phase, head, tail)
        assert steps[-1]["tokens"] > steps[0]["tokens"] > 0


def test_every_artifact_records_its_provenance(build):
    dirs = [
        "base/hf",
        "shards/pretrain",
        "shards/sft",
        "base/mcore",
        "pretrain/mcore",
        "sft/mcore",
        "sft/hf",
        "sft/quant/w8a8",
    ]
    for rel in dirs:
        rec = json.loads((MODEL / rel / "provenance.json").read_text())
        assert rec["command"] and rec["packages"] and rec["host"], rel
    hf = MODEL / "sft" / "hf"
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (hf / name).is_file(), name


def test_plots_and_report(build):
    for name in ("bench.png", "loss.png"):
        data = (MODEL / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    proc = snakemake("--report", "results/report.html", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ROOT / "results" / "report.html").stat().st_size > 50_000


def test_noop_rerun_does_nothing(build):
    proc = snakemake("-n", timeout=600)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_mindie_config_for_the_quantized_variant(build, tmp_path):
    """mindie.enabled over the finished build: the W8A8 variant's MindIE config.json is the
    only job (no other step reads mindie.*), and it passes the documented-keys check."""
    overlay = tmp_path / "mindie.yaml"
    mindie = {"enabled": True, "variants": ["sft-w8a8"], "container_work_dir": "/home/ma-user/work"}
    overlay.write_text(json.dumps({"mindie": mindie}))
    target = MODEL / "mindie" / "sft-w8a8" / "config.json"
    try:
        proc = snakemake(
            str(target.relative_to(ROOT)), "--configfile", "config/config.yaml", str(overlay)
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        assert re.search(r"^mindie_config\s+1$", out, re.M) and re.search(
            r"^total\s+1$", out, re.M
        ), out
        check = [str(ROOT / ".envs/plot/bin/llmbuild"), "mindie", "check", str(target)]
        assert subprocess.run(check, capture_output=True, text=True).returncode == 0
        backend = json.loads(target.read_text())["BackendConfig"]
        model = backend["ModelDeployConfig"]["ModelConfig"][0]
        assert model["modelWeightPath"] == "/home/ma-user/work/results/tiny-llama/sft/quant/w8a8"
        assert model["modelName"] == "tiny-llama" and model["worldSize"] == 1
        assert backend["ModelDeployConfig"]["maxSeqLen"] == 512  # serve.max_model_len
    finally:  # not part of the default graph: leave the finished build as it was
        shutil.rmtree(MODEL / "mindie", ignore_errors=True)
        shutil.rmtree(ROOT / "logs" / "tiny-llama" / "mindie", ignore_errors=True)
