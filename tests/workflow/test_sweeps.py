"""Sweeps in the graph: one service per (variant, serve setting), one benchmark per benchmark
setting against it, one plot job per sweep; the knobs reach their commands; a sweep of any
width runs on 2 cores; a changed setting reruns only its own jobs; bad sweeps stop planning
with one line."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import snakefork

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from llmbuild.cli import build_parser  # noqa: E402

SWEEPS = {
    "grid": {
        "variants": ["sft", "sft-w8a8"],
        "serve": {
            "s4": {"max_num_seqs": 4, "max_num_batched_tokens": 256},
            "s8": {"max_num_seqs": 8, "block_size": 32},
            "s16": {"max_num_seqs": 16, "enable_prefix_caching": True},
        },
        "bench": {"c1": {"concurrency": [1]}, "c4": {"concurrency": [4], "epochs": 3}},
    },
    "prefix": {
        "serve": {"on": {"enable_prefix_caching": True}, "off": {"enable_prefix_caching": False}},
        "bench": {
            "shared": {"prefix_len": 96, "input_len": [128], "output_len": [4], "epochs": 8},
        },
    },
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["--cores", "2", "--resources", "serve_slots=1", "--latency-wait", "5", *args]
    return snakefork.run(cmd, capture_output=True, text=True, timeout=600, cwd=workdir)


def overlay(workdir: Path, change: dict) -> list[str]:
    (workdir / "change.yaml").write_text(json.dumps(change))
    return ["--configfile", "config/config.yaml", "change.yaml"]


def jobs(text: str) -> list[dict]:
    """Each planned job of a dry run's ``-p`` output: rule, input, output, wildcards, shell."""
    out = []  # a service's group prints its jobs indented
    for block in re.split(r"\n(?=\s*(?:local)?rule \w+:\n)", text):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m:
            continue
        job = {"rule": m[1]}
        for line in block.splitlines():
            s = line.strip()
            for key in ("input", "output", "wildcards"):
                if s.startswith(f"{key}: "):
                    job[key] = s.removeprefix(f"{key}: ")
            if line.startswith("Shell command: "):
                job["shell"] = line.removeprefix("Shell command: ")
        out.append(job)
    return out


def parsed(shell: str) -> dict:
    words = shlex.split(shell.split(" > ")[0])
    words = words[1:] if words[0] == "exec" else words
    at = next(i for i, w in enumerate(words) if w.endswith("llmbuild")) + 1
    return vars(build_parser(words[at]).parse_args(words[at:]))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, fake_envs):
    wd = tmp_path_factory.mktemp("sweeps")
    shutil.copytree(ROOT / "config", wd / "config")
    shutil.copytree(ROOT / "envs", wd / "envs")
    fake_envs(wd)
    return wd


@pytest.fixture(scope="module")
def planned(workdir):
    proc = snakemake(workdir, "-n", "-p", "--forceall", *overlay(workdir, {"sweeps": SWEEPS}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return jobs(proc.stdout)


def test_one_service_per_serve_setting_one_benchmark_per_bench_setting(planned):
    count = Counter(j["rule"] for j in planned)
    assert count["serve_sweep"] == 2 * 3 + 1 * 2
    assert count["bench_sweep"] == 2 * 3 * 2 + 1 * 2 * 1
    assert count["plot_sweep"] == 2
    # the default graph's own jobs are untouched by the sweeps
    assert (count["serve"], count["bench_static"], count["plot_bench"]) == (5, 2, 1)


def test_every_sweep_verdict_reaches_the_gate_summary(planned):
    verdicts = {o for j in planned if j["rule"] == "bench_sweep" for o in j["output"].split(", ")}
    verdicts = {o for o in verdicts if "/gates/sweeps/" in o}
    assert len(verdicts) == 2 * 3 * 2 + 1 * 2 * 1
    (summary,) = [j for j in planned if j["rule"] == "gate_summary"]
    assert verdicts <= set(parsed(summary["shell"])["input"])


def _job(planned, rule, output_part):
    (job,) = [j for j in planned if j["rule"] == rule and output_part in j["output"]]
    return job


def test_serve_settings_reach_their_service(planned):
    s4 = parsed(_job(planned, "serve_sweep", "sweeps/grid/sft/s4/service.json")["shell"])
    assert (s4["max_num_seqs"], s4["max_num_batched_tokens"], s4["block_size"]) == (4, 256, None)
    assert s4["enable_prefix_caching"] is False and s4["served_model_name"] == "sft"
    assert s4["model"] == "results/tiny-llama/sft/hf"
    s8 = parsed(_job(planned, "serve_sweep", "sweeps/grid/sft-w8a8/s8/service.json")["shell"])
    assert (s8["max_num_seqs"], s8["block_size"]) == (8, 32)
    assert s8["model"] == "results/tiny-llama/sft/quant/w8a8"
    # the rest of serve.* as configured
    assert s8["max_model_len"] == 512 and s8["kv_cache_space_gib"] == 1
    on = parsed(_job(planned, "serve_sweep", "sweeps/prefix/sft/on/service.json")["shell"])
    off = parsed(_job(planned, "serve_sweep", "sweeps/prefix/sft/off/service.json")["shell"])
    assert (on["enable_prefix_caching"], off["enable_prefix_caching"]) == (True, False)
    assert on["speculative_config"] is None


def test_a_quantized_service_waits_for_its_accuracy_gate(planned):
    job = _job(planned, "serve_sweep", "sweeps/grid/sft-w8a8/s4/service.json")
    assert "results/tiny-llama/gates/quant/sft-w8a8.json" in job["input"]
    job = _job(planned, "serve_sweep", "sweeps/grid/sft/s4/service.json")
    assert "gates/quant" not in job["input"]


def test_bench_settings_reach_their_benchmark(planned):
    job = _job(planned, "bench_sweep", "sweeps/prefix/sft/off/shared.csv")
    args = parsed(job["shell"])
    assert args["endpoint"] == "results/tiny-llama/sweeps/prefix/sft/off/service.json"
    assert (args["prefix_len"], args["input_len"], args["output_len"]) == (96, (128,), (4,))
    assert (args["epochs"], args["concurrency"], args["speculative"]) == (8, (1, 2, 4), False)
    assert args["verdict"] == "results/tiny-llama/gates/sweeps/prefix/sft/off/shared.json"
    assert args["keep_on_failure"] == "logs/tiny-llama/sweeps/prefix/sft/off/failed-shared"
    c4 = parsed(_job(planned, "bench_sweep", "sweeps/grid/sft/s8/c4.csv")["shell"])
    assert (c4["concurrency"], c4["epochs"], c4["prefix_len"]) == ((4,), 3, 0)


def test_plot_labels_every_run(planned):
    job = _job(planned, "plot_sweep", "plots/sweeps/prefix/pareto.png")
    args = parsed(job["shell"])
    assert args["labels"] == "sft/on/shared,sft/off/shared"
    assert args["input"] == [
        "results/tiny-llama/sweeps/prefix/sft/on/shared.csv",
        "results/tiny-llama/sweeps/prefix/sft/off/shared.csv",
    ]
    assert args["compare"] == "results/tiny-llama/plots/sweeps/prefix/compare.png"
    assert args["table"] == "results/tiny-llama/plots/sweeps/prefix/summary.csv"


def test_speculative_services(workdir):
    spec = {
        "variants": ["sft"],
        "serve": {
            "ngram": {"speculative": {"method": "ngram", "prompt_lookup_max": 3}},
            "draft": {"speculative": {"method": "draft_model", "num_speculative_tokens": 2}},
        },
        "bench": {"b": {"output_mode": "natural"}},
    }
    change = {"sweeps": {"spec": spec}}
    proc = snakemake(workdir, "-n", "-p", "--forceall", *overlay(workdir, change))
    assert proc.returncode == 0, proc.stderr[-3000:]
    planned = jobs(proc.stdout)
    draft = _job(planned, "serve_sweep", "sweeps/spec/sft/draft/service.json")
    assert json.loads(parsed(draft["shell"])["speculative_config"]) == {
        "method": "draft_model",
        "model": "results/tiny-llama/base/hf",
        "num_speculative_tokens": 2,
    }
    assert "results/tiny-llama/base/hf" in draft["input"]  # the draft is an input
    ngram = _job(planned, "serve_sweep", "sweeps/spec/sft/ngram/service.json")
    assert json.loads(parsed(ngram["shell"])["speculative_config"]) == {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_max": 3,
    }
    bench = parsed(_job(planned, "bench_sweep", "sweeps/spec/sft/ngram/b.csv")["shell"])
    assert (bench["speculative"], bench["output_mode"]) == (True, "natural")


def test_bad_sweeps_stop_planning_with_one_line(workdir):
    bad = {"g": {"serve": {"a": {"block_size": 24}}, "bench": {"b": {}}}}
    proc = snakemake(workdir, "-n", *overlay(workdir, {"sweeps": bad}))
    assert proc.returncode != 0
    (line,) = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln]
    assert line.startswith(
        "llmbuild: error: change.yaml: sweeps.g.serve.a.block_size: block_size 24 is not a "
        "multiple of 16"
    )


def counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "Nothing to be done" in proc.stdout:
        return {}
    table = proc.stdout.split("Job stats:")[1].split("total")[0]
    found = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


WIDE = {  # of the base model: only the tiny model's two jobs upstream, so it builds quickly
    "wide": {
        "variants": ["base"],
        "serve": {"a": {"max_num_seqs": 2}, "b": {"max_num_seqs": 4}},
        "bench": {"x": {"concurrency": [1]}, "y": {"concurrency": [2]}, "z": {}},
    }
}


def test_a_wide_sweep_runs_on_two_cores_and_reruns_only_what_changed(workdir):
    """Three benchmarks share each service (Snakemake runs them together with it): they fit
    2 cores. Then a serve setting's change reruns its service's jobs, a benchmark setting's
    change every benchmark of the services it shares (a restarted service's consumers all
    rerun), and the plot."""
    target = "results/tiny-llama/plots/sweeps/wide/pareto.png"
    proc = snakemake(workdir, target, *overlay(workdir, {"sweeps": WIDE}))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = workdir / "results/tiny-llama/sweeps/wide/base"
    assert sorted(p.name for p in out.glob("*/*.csv")) == sorted(["x.csv", "y.csv", "z.csv"] * 2)
    assert not list(out.glob("*/service.json"))  # services end with their consumers
    assert counts(snakemake(workdir, "-n", target, *overlay(workdir, {"sweeps": WIDE}))) == {}

    changed = json.loads(json.dumps(WIDE))
    changed["wide"]["serve"]["b"]["max_num_seqs"] = 8
    got = counts(snakemake(workdir, "-n", target, *overlay(workdir, {"sweeps": changed})))
    assert got == {"serve_sweep": 1, "bench_sweep": 3, "plot_sweep": 1}

    changed = json.loads(json.dumps(WIDE))
    changed["wide"]["bench"]["z"] = {"epochs": 5}
    got = counts(snakemake(workdir, "-n", target, *overlay(workdir, {"sweeps": changed})))
    assert got == {"serve_sweep": 2, "bench_sweep": 6, "plot_sweep": 1}
