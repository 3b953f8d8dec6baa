"""Several models in one graph (models:): each entry planned as its own one-model config, its
errors pointed at the entry, and the rules' calls reaching the job's model's wiring."""

import copy
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake.utils import validate

from llmbuild import plan
from llmbuild.errors import UserError
from llmbuild.wiring import Wiring
from llmbuild.wiring.models import Models, unify

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "src/llmbuild/schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
CATALOG = ROOT / "config/catalog.yaml"
SRC = "my.yaml"


def fill(cfg):
    validate(cfg, str(SCHEMA_PATH), set_default=True)


def config(models=None, **top):
    cfg = copy.deepcopy(yaml.safe_load((ROOT / "config/config.yaml").read_text()))
    cfg.update(top)
    if models is not None:
        cfg["models"] = models
    plan.check_config(cfg, SCHEMA, SRC)
    fill(cfg)
    return cfg


@pytest.fixture
def qwen(tmp_path):
    d = tmp_path / "qwen"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2})
    )
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_text("")
    return str(d)


def two(qwen, **entry):
    return [
        {"name": "tiny-llama"},
        {"name": "qwen2.5-0.5b", "source": "hf", "path": qwen, **entry},
    ]


def plan_models(cfg):
    return plan.plan_models(cfg, SCHEMA, CATALOG, SRC, fill)


def test_one_model_config_is_planned_as_it_is():
    cfg = config()
    out = plan_models(cfg)
    assert list(out) == ["tiny-llama"] and out["tiny-llama"] is cfg


def test_each_entry_is_its_own_config_over_the_top_level(qwen):
    entry = {"train": {"phases": ["sft"], "sft": {"iters": 70}}, "quantize": {"schemes": []}}
    out = plan_models(config(two(qwen, **entry)))
    tiny, q = out["tiny-llama"], out["qwen2.5-0.5b"]
    assert tiny["models"] is None and q["models"] is None
    assert tiny["model"]["source"] == "tiny" and tiny["train"]["phases"] == ["pretrain", "sft"]
    assert q["model"] == {**tiny["model"], "name": "qwen2.5-0.5b", "source": "hf", "path": qwen}
    assert q["train"]["phases"] == ["sft"] and q["train"]["sft"]["iters"] == 70
    # the rest of the section comes from the top level, the other sections are the same
    assert q["train"]["sft"]["lr"] == tiny["train"]["sft"]["lr"] == 0.001
    assert q["quantize"]["schemes"] == [] and tiny["quantize"]["schemes"] == ["w8a8"]
    assert q["bench"] == tiny["bench"] and q["plot"] == tiny["plot"]
    # the one-model config of the first entry is the top-level one
    alone = config()
    plan_models(alone)
    assert tiny == alone


def test_an_entry_adding_list_items_gets_their_defaults(qwen):
    adapters = [{"name": "upper", "task": "uppercase"}]
    out = plan_models(config(two(qwen, train={"lora": {"adapters": adapters}})))
    (got,) = out["qwen2.5-0.5b"]["train"]["lora"]["adapters"]
    assert (
        got["name"] == "upper"
        and "task" in got
        and out["tiny-llama"]["train"]["lora"]["adapters"] == []
    )


@pytest.mark.parametrize(
    "models, field, words",
    [
        # the schema, on the entry's own key
        (
            [{"name": "tiny-llama", "train": {"sft": {"lrr": 1}}}],
            "models.0.train.sft.lrr",
            "unknown key",
        ),
        ([{"name": "Tiny"}], "models.0.name", "does not match"),
        ([{"name": "a", "bogus": {}}], "models.0.bogus", "unknown key"),
        # a model listed twice
        ([{"name": "tiny-llama"}, {"name": "tiny-llama"}], "models.1.name", "listed twice"),
        # planning's own checks, on the entry's key
        (
            [{"name": "tiny-llama"}, {"name": "qwen2.5-0.5b", "source": "hf", "path": "QWEN"}],
            "models.1.path",
            "does not exist",
        ),
        # a top-level key this model cannot take: the top-level key, and which model
        (
            [{"name": "tiny-llama"}, {"name": "mistral-7b", "source": "hf", "path": "QWEN"}],
            "quantize.schemes",
            "(for model 'mistral-7b', models.1)",
        ),
        (
            [{"name": "tiny-llama", "quantize": {"schemes": ["kv-int8"]}}],
            "models.0.quantize.schemes",
            "cannot be served",
        ),
        # one device kind and one serving stack per graph
        (
            [
                {"name": "tiny-llama"},
                {"name": "b", "quantize": {"schemes": []}, "train": {"device": "cuda"}},
            ],
            "models.1.train.device",
            "one device kind",
        ),
    ],
)
def test_an_entrys_error_names_the_entry(qwen, models, field, words):
    for entry in models:
        if entry.get("path") == "QWEN":
            entry["path"] = qwen + "/missing"
    with pytest.raises(UserError) as exc:
        plan_models(config(models))
    msg = str(exc.value)
    assert msg.startswith(f"{SRC}: {field}: ") and words in msg and "\n" not in msg


def test_a_top_level_key_failing_for_one_model_names_that_model(qwen):
    # the pipeline split of the top level does not divide the stand-in's 2 layers evenly...
    cfg = config(two(qwen), train={**config()["train"], "pp": 3, "tp": 1})
    with pytest.raises(UserError) as exc:
        plan_models(cfg)
    msg = str(exc.value)
    assert msg.startswith(f"{SRC}: train.") and "(for model 'tiny-llama', models.0)" in msg


# --- the rules' calls ---------------------------------------------------------------------


def wirings(qwen, **entry):
    out = plan_models(config(two(qwen, **entry)))
    return Models({m: Wiring(c) for m, c in out.items()}, config())


def wc(model, **kw):
    return SimpleNamespace(model=model, **kw)


def test_a_value_every_model_shares_stays_a_value(qwen):
    W = wirings(qwen)
    assert W.llmbuild("train") == ".envs/train/bin/llmbuild"
    assert W.sources("bench") == [".llmbuild/sources/bench.txt"]
    assert W.train_threads() == 2


def test_a_value_that_differs_becomes_a_function_of_the_jobs_model(qwen):
    W = wirings(
        qwen,
        train={"phases": ["sft"], "sft": {"iters": 70}, "save_interval": 25},
        quantize={"schemes": []},
    )
    assert isinstance(W.synth_corpus_flags(), str)  # the same for both: a plain value
    run = W.train_run_flags()  # --save-interval differs: a function of the job's model
    assert "--save-interval 50" in run(wc("tiny-llama"))
    assert "--save-interval 25" in run(wc("qwen2.5-0.5b"))
    gate_iters = W.phase_iters
    assert gate_iters(wc("tiny-llama", phase="sft")) == 300
    assert gate_iters(wc("qwen2.5-0.5b", phase="sft")) == 70
    served = W.served  # an attribute that differs: a function of the job's model too
    assert served(wc("tiny-llama")) == ["base", "sft", "sft-w8a8"]
    assert served(wc("qwen2.5-0.5b")) == ["base", "sft"]
    inputs = W.train_inputs(wc("qwen2.5-0.5b", phase="sft"))
    assert inputs["load"] == "results/qwen2.5-0.5b/base/mcore"
    assert (
        W.train_inputs(wc("tiny-llama", phase="sft"))["load"] == "results/tiny-llama/pretrain/mcore"
    )


def test_a_function_keeps_the_signature_snakemake_reads(qwen):
    W = wirings(
        qwen,
        train={"dp": 2, "sft": {"global_batch_size": 64}, "pretrain": {"global_batch_size": 32}},
    )
    f = W.train_rank_threads
    assert list(inspect.signature(f).parameters) == ["wildcards", "threads"]
    assert f(wc("tiny-llama"), threads=4) == 4 and f(wc("qwen2.5-0.5b"), threads=4) == 2
    threads = W.train_threads()  # 2 for both (max(2, ranks)) ...
    assert threads == 2
    mem = W.train_mem_mb()  # ... but memory differs: a function of the job's model
    assert mem(wc("tiny-llama")) == 6000 and mem(wc("qwen2.5-0.5b")) == 12000


def test_mappings_are_unified_key_by_key():
    got = unify({"a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}})
    assert got["x"] == 1 and got["y"](wc("a")) == 2 and got["y"](wc("b")) == 3


def test_what_spans_the_models(qwen):
    W = wirings(qwen, bench={"dynamic": {"enabled": False}})
    targets = W.final_targets()
    assert "results/tiny-llama/plots/bench.png" in targets
    assert "results/qwen2.5-0.5b/plots/bench.png" in targets
    assert "results/compare/bench.png" in targets and "results/compare/dynamic.png" in targets
    assert W.compare_csvs(wc(None, kind="bench")) == [
        "results/tiny-llama/bench/sft/static.csv",
        "results/tiny-llama/bench/sft-w8a8/static.csv",
        "results/qwen2.5-0.5b/bench/sft/static.csv",
        "results/qwen2.5-0.5b/bench/sft-w8a8/static.csv",
    ]
    # dynamic: only the models whose dynamic benchmarks are on
    assert W.compare_csvs(wc(None, kind="dynamic")) == [
        "results/tiny-llama/bench/sft/dynamic.csv",
        "results/tiny-llama/bench/sft-w8a8/dynamic.csv",
    ]
    assert "--labels tiny-llama/sft,tiny-llama/sft-w8a8 " in W.compare_flags(
        wc(None, kind="dynamic")
    )
    assert W.own_model_pattern() == r"tiny\-llama|qwen2\.5\-0\.5b"
    one = Models({"tiny-llama": Wiring(plan_models(config())["tiny-llama"])}, config())
    assert not [t for t in one.final_targets() if "compare" in t]
