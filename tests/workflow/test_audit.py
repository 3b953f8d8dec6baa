"""`llmbuild audit` and `llmbuild why` over a build of the real graph made by the fake
llmbuild (tests/workflow/fake_llmbuild.py writes provenance records with llmbuild's own parser
and writer). The workflow (Snakefile, rules, src) is copied into the build's directory, so a
source file can be changed without touching the repository.

Each tampering (a flipped byte, an edited record, a changed parameter, a changed source file, a
changed environment pin) must be named by the audit with its artifact and field, exit 1; `why`
must name the changed field of each change type of test_incremental.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import snakefork

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]


def snakemake(wd: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-d", str(wd), "--cores", "2"]
    cmd += ["--resources", "serve_slots=1", "--latency-wait", "5", *args]
    proc = snakefork.run(cmd, capture_output=True, text=True, timeout=600, cwd=wd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def llmbuild(wd: Path, *args: str, change: dict | None = None) -> subprocess.CompletedProcess:
    extra: list[str] = []
    if change is not None:
        (wd / "change.yaml").write_text(json.dumps(change))
        extra = ["--configfile", "config/config.yaml", "change.yaml"]
    cmd = [sys.executable, "-m", "llmbuild", *args, "--directory", str(wd), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=wd)


@pytest.fixture(scope="module")
def built(tmp_path_factory, fake_envs):
    wd = tmp_path_factory.mktemp("audit")
    for name in ("Snakefile", "rules", "src", "report", "config", "envs"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, wd / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, wd / name)
    fake_envs(wd, frozen=True)
    snakemake(wd)
    return wd


class Restored:
    """Put a file's bytes and dates back, so later tests see the build as it was (the fake
    environments' markers were not made by Snakemake, which keeps no checksums for them)."""

    def __init__(self, path: Path):
        self.path, self.data, self.stat = path, path.read_bytes(), path.stat()

    def __enter__(self) -> Restored:
        return self

    def __exit__(self, *exc) -> None:
        self.path.write_bytes(self.data)
        os.utime(self.path, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))


def findings(proc: subprocess.CompletedProcess) -> list[dict]:
    return json.loads(proc.stdout)["findings"]


def test_untouched_build_audits_clean(built):
    proc = llmbuild(built, "audit", "--json")
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"], doc["findings"]
    assert doc["checked"]["record"] > 40 and doc["checked"]["gates"] >= 10
    assert doc["checked"]["params"] > 20 and doc["checked"]["closure"] > 40


def test_flipped_byte_in_a_shard_is_named(built):
    shard = built / "results/tiny-llama/shards/sft/content.txt"
    with Restored(shard) as r:
        shard.write_bytes(bytes([r.data[0] ^ 1]) + r.data[1:])
        proc = llmbuild(built, "audit", "--json")
    assert proc.returncode == 1
    hits = [(f["check"], f["artifact"], f["field"]) for f in findings(proc)]
    assert ("bytes", "results/tiny-llama/shards/sft", "content.txt") in hits
    # the consumer's recorded input no longer matches what is there: named too, as bytes
    assert all(c == "bytes" for c, *_ in hits), hits


def test_edited_record_is_named(built):
    rec_path = built / "results/tiny-llama/sft/quant/w8a8/provenance.json"
    rec = json.loads(rec_path.read_text())
    inp = "results/tiny-llama/sft/hf"
    rec["inputs"][inp] = "0" * 64  # claims another input than the one it was made from
    with Restored(rec_path):
        rec_path.write_text(json.dumps(rec))
        proc = llmbuild(built, "audit", "--json")
    assert proc.returncode == 1
    hits = {(f["check"], f["artifact"], f["field"]) for f in findings(proc)}
    assert ("closure", "results/tiny-llama/sft/quant/w8a8", f"inputs[{inp}]") in hits


def test_changed_parameter_is_named_with_its_config_key(built):
    proc = llmbuild(built, "audit", "--json", change={"quantize": {"smoothing_strength": 0.7}})
    assert proc.returncode == 1
    found = [f for f in findings(proc) if f["check"] == "params"]
    assert found and all(f["field"] == "--smoothing-strength" for f in found), found
    # the strength shapes the SmoothQuant scale file (w8a8 reads it through that file's bytes)
    scales = "results/tiny-llama/sft/quant/scales/smoothquant.safetensors"
    assert {f["artifact"] for f in found} == {scales}
    assert "0.7" in found[0]["message"] and "quantize.smoothing_strength" in found[0]["message"]


def test_changed_source_file_is_named(built):
    src = built / "src/llmbuild/provenance.py"  # every recorded step imported it
    with Restored(src) as r:
        src.write_bytes(r.data + b"\n# changed\n")
        proc = llmbuild(built, "audit", "--json")
    assert proc.returncode == 1
    drift = [f for f in findings(proc) if f["check"] == "drift" and f["field"] == "source"]
    assert drift and all("llmbuild/provenance.py" in f["message"] for f in drift)


def test_changed_environment_pin_is_named(built):
    spec = built / "envs/quantize.txt"
    original = spec.read_text()
    pin = next(ln for ln in original.splitlines() if ln.startswith("torch=="))
    with Restored(spec):
        spec.write_text(original.replace(pin, "torch==9.9.9"))
        proc = llmbuild(built, "audit", "--json")
    assert proc.returncode == 1
    hits = [f for f in findings(proc) if f["artifact"] == ".envs/quantize/ready.json"]
    assert any(
        f["field"] == "pins[envs/quantize.txt]" and "torch==9.9.9" in f["message"] for f in hits
    ), hits


def test_failed_gate_verdict_is_named(built):
    verdict = built / "results/tiny-llama/gates/quant/sft-w8a8.json"
    with Restored(verdict):
        verdict.write_text(json.dumps({"status": "warn", "detail": "accuracy dropped"}))
        proc = llmbuild(built, "audit", "--json")
    hits = [(f["check"], f["artifact"]) for f in findings(proc)]
    assert ("gates", "results/tiny-llama/gates/quant/sft-w8a8.json") in hits


def test_lineage_reaches_the_raw_inputs(built):
    proc = llmbuild(built, "audit", "--json", "--lineage", "results/tiny-llama/plots/bench.png")
    tree = json.loads(proc.stdout)["lineage"][0]

    def paths(node):
        yield node["path"], node["made_by"]
        for c in node["inputs"]:
            yield from paths(c)

    seen = dict(paths(tree))
    # the plot <- CSVs <- services <- models <- ... <- the tiny model made from the corpus
    assert "results/tiny-llama/bench/sft-w8a8/static.csv" in seen
    assert "results/tiny-llama/sft/quant/w8a8" in seen
    assert "results/tiny-llama/base/hf" in seen
    assert seen["results/tiny-llama/data/corpus.jsonl"] == "data synth-corpus"


# (change, the text `why` must print): the change types of test_incremental.py
WHY = {
    "bench-static": (
        {"bench": {"static": {"concurrency": [1, 2]}}},
        "--concurrency: [1, 2, 4] -> [1, 2] (config bench.static.concurrency)",
    ),
    "bench-dynamic": (
        {"bench": {"dynamic": {"request_rate": [1, 2]}}},
        "(config bench.dynamic.request_rate)",
    ),
    "bench-dataset": (
        {"bench": {"dataset": {"avg_input": 40}}},
        "--avg-input: 32.0 -> 40.0 (config bench.dataset.avg_input)",
    ),
    "smoothing": (
        {"quantize": {"smoothing_strength": 0.7}},
        "--smoothing-strength: 0.5 -> 0.7 (config quantize.smoothing_strength)",
    ),
    "training-data": (
        {"data": {"sft": {"num_train": 3000}}},
        "-> 3000 (config data.sft.num_train)",
    ),
}


@pytest.mark.parametrize("case", sorted(WHY))
def test_why_names_the_changed_field(built, case):
    change, text = WHY[case]
    proc = llmbuild(built, "why", change=change)
    assert proc.returncode == 0, proc.stderr
    assert text in proc.stdout, proc.stdout


def test_why_names_an_environment_spec_change(built):
    spec = built / "envs/quantize.txt"
    with Restored(spec) as r:
        spec.write_bytes(r.data + b"# changed\n")
        later = time.time() + 2
        os.utime(spec, (later, later))
        proc = llmbuild(built, "why")
    assert "- env -> .envs/quantize/ready.json" in proc.stdout
    assert "envs/quantize.txt changed" in proc.stdout


def planned(wd: Path) -> dict[str, int]:
    out = snakemake(wd, "-n").stdout
    if "Nothing to be done" in out:
        return {}
    jobs = {}
    for line in out.split("Job stats:")[1].split("total")[0].splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs


def test_source_change_reruns_its_stage_and_what_follows_only(built):
    src = built / "src/llmbuild/quantize/smoothquant.py"
    with Restored(src) as r:
        src.write_bytes(r.data + b"\n# changed\n")
        jobs = planned(built)
        why = llmbuild(built, "why").stdout
    assert jobs.get("quantize") == 1 and "tokenize_sft" not in jobs and "train" not in jobs
    assert "source src/llmbuild/quantize/smoothquant.py" in why, why


def test_same_bytes_with_a_newer_date_reruns_nothing(built):
    """Early cutoff, as far as Snakemake gives it: an input file of at most 1 MB rewritten with
    the same bytes is compared by the checksum recorded when its consumers ran."""
    task = built / "results/tiny-llama/data/task/train.jsonl"
    later = time.time() + 5
    os.utime(task, (later, later))
    assert planned(built) == {}
