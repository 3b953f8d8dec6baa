"""Every scenario config (config/scenarios/) plans, alone and with quick.yaml, and plans what it
says: a user's own model of each family instead of the tiny one, tensor or uneven pipeline
parallel training, the W4A16 variant, external environments."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import snakefork

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.name for p in (ROOT / "config/scenarios").glob("*.yaml"))
FAMILIES = {
    "llama2": ("LlamaForCausalLM", "llama2-7b"),
    "llama3": ("LlamaForCausalLM", "llama3.1-8b"),
    "qwen2.5": ("Qwen2ForCausalLM", "qwen2.5-0.5b"),
    "mistral": ("MistralForCausalLM", "mistral-7b"),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The repo's config and specs, and a stand-in directory for each family's model (planning
    reads only config.json and checks the tokenizer and weights are there)."""
    wd = tmp_path_factory.mktemp("scenarios")
    shutil.copytree(ROOT / "config", wd / "config")
    shutil.copytree(ROOT / "envs", wd / "envs")
    for family, (arch, _) in FAMILIES.items():
        d = wd / "results/models" / family
        d.mkdir(parents=True)
        (d / "config.json").write_text(
            json.dumps({"architectures": [arch], "num_hidden_layers": 2})
        )
        (d / "tokenizer.json").write_text("{}")
        (d / "model.safetensors").write_text("")
    return wd


def plan(workdir: Path, *overlays: str, extra: dict | None = None):
    files = ["config/config.yaml", *(f"config/scenarios/{o}" for o in overlays)]
    if extra is not None:
        (workdir / "extra.yaml").write_text(json.dumps(extra))
        files.append("extra.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["-n", "-p", "--forceall", "--cores", "2", "--configfile", *files]
    return snakefork.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir)


def shell_commands(proc) -> list[str]:
    return [
        ln.removeprefix("Shell command: ")
        for ln in proc.stdout.splitlines()
        if ln.startswith("Shell command: ")
    ]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("quick", [False, True])
def test_scenario_plans(workdir, scenario, quick):
    overlays = [scenario, "quick.yaml"] if quick and scenario != "quick.yaml" else [scenario]
    proc = plan(workdir, *overlays)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cmds = shell_commands(proc)
    joined = "\n".join(cmds)
    # every scenario still proves what it builds: parity, training, consumers, the summary
    for verb in ("gates parity", "gates train", "gates summary", "eval accuracy", "bench static"):
        assert verb in joined, (scenario, verb)
    if scenario.startswith("hf-"):
        family = scenario.removeprefix("hf-").removesuffix(".yaml")
        name = FAMILIES[family][1]
        assert "model tiny" not in joined
        assert f"convert hf2mg --input results/models/{family} --output results/{name}/" in joined
        assert f"--tokenizer results/models/{family}" in joined
        quantized = [c for c in cmds if " quantize run " in c]
        assert bool(quantized) == (family != "mistral")
    if scenario == "tp2.yaml":
        trains = [c for c in cmds if " train run " in c]
        assert len(trains) == 2 and all("--nproc_per_node 2 -m llmbuild" in c for c in trains)
        assert " --tp 2 --pp 1 " in next(c for c in cmds if "convert hf2mg" in c)
    if scenario == "pp2-uneven.yaml":
        assert " --tp 1 --pp 2 --pp-layers 1,3 " in next(c for c in cmds if "convert hf2mg" in c)
    if scenario == "w4a16.yaml":
        assert "--scheme w4a16" in joined and "--served-model-name sft-w4a16" in joined
        assert "w8a8" not in joined
    if scenario == "models.yaml":
        # two models, each with its own source, chain and scheme, and the plots across them
        def modes(name):
            trains = [c for c in cmds if " train run " in c and f"--output results/{name}/" in c]
            return sorted(c.split("--mode ")[1].split()[0] for c in trains)

        assert modes("tiny-llama") == ["pretrain", "sft"]
        assert modes("qwen2.5-0.5b") == ["sft"]
        assert "model tiny --input results/tiny-llama/" in joined
        assert (
            "convert hf2mg --input results/models/qwen2.5 --output results/qwen2.5-0.5b/" in joined
        )
        assert "--scheme w8a8 --input results/tiny-llama/sft/hf" in joined
        assert "--scheme w4a16-gptq --input results/qwen2.5-0.5b/sft/hf" in joined
        compare = next(c for c in cmds if "--output results/compare/bench.png" in c)
        assert "--labels tiny-llama/sft,tiny-llama/sft-w8a8,qwen2.5-0.5b/sft," in compare
    if scenario == "external-envs.yaml":
        assert ".envs/" not in joined and "envs create" not in joined
        assert all(c.split()[0] in ("llmbuild", "exec", "torchrun") for c in cmds if c != "None")


def test_mistral_with_a_scheme_the_catalog_refuses_stops_planning(workdir):
    proc = plan(workdir, "hf-mistral.yaml", extra={"quantize": {"schemes": ["w8a8"]}})
    assert proc.returncode != 0
    (line,) = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln]
    assert "quantize.schemes: model 'mistral-7b' does not support w8a8" in line


def test_hf_scenario_without_its_model_stops_planning(workdir):
    """A model.path that does not exist is refused at planning, not ignored."""
    proc = plan(workdir, "hf-qwen2.5.yaml", extra={"model": {"path": "results/models/nope"}})
    assert proc.returncode != 0
    (line,) = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln]
    assert "extra.yaml: model.path: results/models/nope does not exist" in line
