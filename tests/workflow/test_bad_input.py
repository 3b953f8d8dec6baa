"""Bad input stops with one clear line naming the file and the field, and a non-zero exit."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import snakefork

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]


def plan_with(tmp_path, overlay):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    (tmp_path / "bad.yaml").write_text(json.dumps(overlay))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(tmp_path),
        "-n",
        "--cores",
        "2",
        "--configfile",
        "config/config.yaml",
        "bad.yaml",
    ]
    return snakefork.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def error_lines(proc):
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln]


def test_unknown_config_key(tmp_path):
    proc = plan_with(tmp_path, {"train": {"sft": {"learning_rate": 0.1}}})
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line.startswith("llmbuild: error: bad.yaml: train.sft.learning_rate: unknown key;")


def test_unsupported_model_quantization_pair(tmp_path):
    proc = plan_with(
        tmp_path,
        {
            "model": {"name": "qwen2.5-7b", "source": "hf", "path": "m"},
            "quantize": {"schemes": ["w8a8"]},
        },
    )
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert "bad.yaml: quantize.schemes: model 'qwen2.5-7b' does not support w8a8" in line


@pytest.mark.parametrize(
    ("train", "says"),
    [
        ({"pp": 2, "pp_layers": [1, 2]}, "train.pp_layers: [1,2] sums to 3 but the model has 4"),
        ({"pp": 2, "pp_layers": [1, 1, 2]}, "train.pp_layers: [1,1,2] has 3 stages but train.pp"),
        ({"pp": 2, "pp_layers": [4, 0]}, "train.pp_layers.1: 0 is less than the minimum of 1"),
    ],
)
def test_bad_pipeline_split_stops_planning(tmp_path, train, says):
    proc = plan_with(tmp_path, {"train": train})
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line.startswith("llmbuild: error: bad.yaml: ") and says in line


def _hf_dir(path, weights="model.safetensors"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    (path / "tokenizer.json").write_text("{}")
    (path / weights).write_text("")
    return path


@pytest.mark.parametrize(
    ("overlay", "says"),
    [
        (
            {"train": {"sft": {"warmup_iters": 300}}},
            "train.sft.warmup_iters: 300 warmup steps but only 300 steps",
        ),
        (
            {"data": {"seq_length": 128}},
            "data.seq_length: 128 is above train.sft.seq_length 64: SFT examples between 65 "
            "and 128 tokens would be cut",
        ),
        (
            {"bench": {"dynamic": {"request_rate": [1, 2, 4], "num_prompts": [10, 20]}}},
            "bench.dynamic.num_prompts: 2 values for 3 request rates",
        ),
        ({"bench": {"dataset": {"min_input": 70}}}, "bench.dataset.min_input: 70 is above"),
        (
            {"model": {"source": "hf", "path": "missing/model"}},
            "model.path: missing/model does not exist",
        ),
        ({"model": {"path": "in/hf"}}, "model.path: model.path is only read with source: hf"),
        (
            {"model": {"source": "hf", "path": "in/pickled"}},
            "model.path: in/pickled holds only pickled .bin/.pt weights",
        ),
        (
            {"data": {"pretrain": {"path": "in/corpus.csv"}}},
            "data.pretrain.path: in/corpus.csv: unknown format '.csv'",
        ),
        (
            {"data": {"sft": {"path": "missing.jsonl", "heldout": "in/heldout.jsonl"}}},
            "data.sft.path: missing.jsonl does not exist",
        ),
        ({"bench": {"dataset": {"type": "sharegpt"}}}, "bench.dataset.path: dataset type"),
        (
            {"bench": {"dataset": {"type": "sharegpt", "path": "in"}}},
            "bench.dataset.path: in is not a file",
        ),
        ({"serve": {"chat_template": "nope.jinja"}}, "serve.chat_template: nope.jinja does not"),
        ({"envs": {"python": "no-such-python3"}}, "envs.python: interpreter 'no-such-python3'"),
        (
            {"eval": {"variants": ["tuned"]}},
            "eval.variants: 'tuned' is not a served variant of this chain "
            "(train.phases: pretrain, sft)",
        ),
        (
            {"bench": {"variants": ["sft-w4a16-gptq"]}},
            "bench.variants: 'sft-w4a16-gptq' is not served (served: base, sft, sft-w8a8)",
        ),
        ({"serve": {"dtype": "fp32"}}, "serve.dtype: 'fp32' is not one of"),
        (
            {"mindie": {"enabled": True, "nodes": 2}},
            "mindie.nodes: 2 nodes do not divide serve.tensor_parallel_size 1",
        ),
        # several models: the entry's own key, or the top-level one and which model
        (
            {
                "models": [
                    {"name": "tiny-llama"},
                    {"name": "qwen2.5-0.5b", "source": "hf", "path": "nope"},
                ]
            },
            "models.1.path: nope does not exist",
        ),
        (
            {"models": [{"name": "tiny-llama"}, {"name": "tiny-llama", "train": {"dp": 2}}]},
            "models.1.name: 'tiny-llama' is listed twice",
        ),
        (
            {"models": [{"name": "tiny-llama", "train": {"sft": {"lr": -1}}}]},
            "models.0.train.sft.lr: -1",
        ),
        (
            {
                "models": [
                    {"name": "tiny-llama"},
                    {"name": "mistral-7b", "source": "hf", "path": "in/hf"},
                ]
            },
            "quantize.schemes: model 'mistral-7b' does not support w8a8",
        ),
        (
            {
                "models": [
                    {"name": "tiny-llama"},
                    {"name": "b", "quantize": {"schemes": []}, "train": {"device": "cuda"}},
                ]
            },
            "models.1.train.device: 'cuda' differs from 'cpu' of model 'tiny-llama'",
        ),
    ],
)
def test_bad_values_and_paths_stop_planning(tmp_path, overlay, says):
    _hf_dir(tmp_path / "in/hf")
    _hf_dir(tmp_path / "in/pickled", "pytorch_model.bin")
    (tmp_path / "in/corpus.csv").write_text("a\n")
    (tmp_path / "in/heldout.jsonl").write_text("{}\n")
    proc = plan_with(tmp_path, overlay)
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line.startswith("llmbuild: error: bad.yaml: ") and says in line, line


def test_missing_model_path_is_refused_even_when_a_build_exists(tmp_path):
    """A model.path that is gone must not leave the previous build looking current."""
    _hf_dir(tmp_path / "in/hf")
    shutil.copytree(ROOT / "envs", tmp_path / "envs")
    ok = plan_with(tmp_path, {"model": {"source": "hf", "path": "in/hf"}})
    assert ok.returncode == 0, ok.stderr[-2000:]
    shutil.rmtree(tmp_path / "in/hf")
    shutil.rmtree(tmp_path / "config")
    proc = plan_with(tmp_path, {"model": {"source": "hf", "path": "in/hf"}})
    assert proc.returncode != 0 and "Nothing to be done" not in proc.stdout
    (line,) = error_lines(proc)
    assert "model.path: in/hf does not exist" in line
