"""Sweeps (the config's ``sweeps``): what they plan, the values each service and benchmark
gets, and the planning checks, one line naming the key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from llmbuild import plan
from llmbuild.errors import UserError
from llmbuild.serve import sweep

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "src/llmbuild/schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
CATALOG = ROOT / "config/catalog.yaml"

GRID = {
    "variants": ["sft", "sft-w8a8"],
    "serve": {
        "s4": {"max_num_seqs": 4, "max_num_batched_tokens": 256},
        "s8": {"max_num_seqs": 8, "block_size": 32},
        "pc": {"enable_prefix_caching": True},
    },
    "bench": {"c1": {"concurrency": [1]}, "c4": {"concurrency": [4], "epochs": 3}},
}


def filled(sweeps: dict, **overlay) -> dict:
    from snakemake.utils import validate

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["sweeps"] = copy.deepcopy(sweeps)
    for key, value in overlay.items():
        section, field = key.split("__")
        cfg[section][field] = value
    plan.check_config(cfg, SCHEMA, "c.yaml")
    validate(cfg, str(SCHEMA_PATH), set_default=True)
    return cfg


def checked(sweeps: dict, **overlay) -> dict:
    cfg = filled(sweeps, **overlay)
    plan.check_plan(cfg, CATALOG, "c.yaml")
    return cfg


def test_a_sweep_crosses_variants_serve_and_bench_settings():
    cfg = checked({"grid": GRID})
    runs = sweep.runs(cfg)
    assert len(runs) == 2 * 3 * 2
    assert len(sweep.services(cfg)) == 2 * 3
    assert runs[0] == sweep.Run("grid", "sft", "s4", "c1")
    assert runs[-1].label == "sft-w8a8/pc/c4"
    assert runs[0].service.dir == "sweeps/grid/sft/s4"


def test_settings_override_only_their_keys():
    cfg = checked({"grid": GRID})
    s4 = sweep.serve_values(cfg, "grid", "s4")
    assert (s4["max_num_seqs"], s4["max_num_batched_tokens"]) == (4, 256)
    assert s4["max_model_len"] == cfg["serve"]["max_model_len"]  # kept from serve.*
    assert s4["enable_prefix_caching"] is False  # the schema default, not the sweep's pc
    assert sweep.serve_values(cfg, "grid", "pc")["enable_prefix_caching"] is True
    c4 = sweep.bench_values(cfg, "grid", "c4")
    assert (c4["concurrency"], c4["epochs"]) == ([4], 3)
    assert c4["input_len"] == cfg["bench"]["static"]["input_len"]
    assert (c4["api"], c4["output_mode"]) == ("completions", "forced")


def test_no_sweeps_plan_nothing_and_default_variants_are_sft():
    cfg = checked({})
    assert sweep.runs(cfg) == [] and sweep.services(cfg) == []
    cfg = checked({"one": {"serve": {"a": None}, "bench": {"b": None}}})
    assert sweep.runs(cfg) == [sweep.Run("one", "sft", "a", "b")]
    assert sweep.serve_values(cfg, "one", "a")["max_num_seqs"] == cfg["serve"]["max_num_seqs"]


def test_speculative_config_json():
    ngram = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
    assert json.loads(sweep.speculative_json(ngram)) == {
        "method": "ngram",
        "num_speculative_tokens": 4,
        "prompt_lookup_max": 3,
    }
    draft = json.loads(sweep.speculative_json({"method": "draft_model"}, "results/m/base/hf"))
    assert draft == {
        "method": "draft_model",
        "model": "results/m/base/hf",
        "num_speculative_tokens": 3,
    }
    with pytest.raises(UserError, match="draft model's directory"):
        sweep.speculative_json({"method": "draft_model"})


@pytest.mark.parametrize(
    ("sweeps", "overlay", "message"),
    [
        (
            {
                "g": {
                    "serve": {"a": {"max_num_seqs": 8, "max_num_batched_tokens": 4}},
                    "bench": {"b": {}},
                }
            },
            {},
            r"^c.yaml: sweeps.g.serve.a.max_num_batched_tokens: max_num_batched_tokens 4 is "
            r"below max_num_seqs 8",
        ),
        (
            {"g": {"serve": {"a": {"block_size": 24}}, "bench": {"b": {}}}},
            {},
            r"^c.yaml: sweeps.g.serve.a.block_size: block_size 24 is not a multiple of 16",
        ),
        (
            {"g": {"variants": ["sft-w4a16"], "serve": {"a": {}}, "bench": {"b": {}}}},
            {},
            r"^c.yaml: sweeps.g.variants: 'sft-w4a16' is not built: its scheme is not in "
            r"quantize.schemes \(w8a8\)",
        ),
        (
            {"g": {"variants": ["tuned"], "serve": {"a": {}}, "bench": {"b": {}}}},
            {},
            r"^c.yaml: sweeps.g.variants: unknown served variant 'tuned'",
        ),
        (
            {"g": {"serve": {"a": {}}, "bench": {"b": {"input_len": [16], "prefix_len": 16}}}},
            {},
            r"^c.yaml: sweeps.g.bench.b.prefix_len: prefix_len 16 must be below every input_len",
        ),
        (
            {"g": {"serve": {"a": {}}, "bench": {"b": {"input_len": [8, 16]}}}},
            {},
            r"^c.yaml: sweeps.g.bench.b.output_len: 2 input lengths and 1 output lengths",
        ),
        (
            {"g": {"serve": {"a": {}}, "bench": {"b": {"input_len": [500], "output_len": [16]}}}},
            {},
            r"^c.yaml: sweeps.g.bench.b.input_len: input 500 \+ output 16 tokens exceed "
            r"max_model_len 512 of serve setting 'a'",
        ),
        (
            {
                "g": {
                    "variants": ["base"],
                    "serve": {"a": {"speculative": {"method": "draft_model"}}},
                    "bench": {"b": {}},
                }
            },
            {},
            r"^c.yaml: sweeps.g.variants: variant 'base' would draft for itself",
        ),
        (
            {
                "g": {
                    "serve": {
                        "a": {
                            "speculative": {
                                "method": "ngram",
                                "prompt_lookup_min": 4,
                                "prompt_lookup_max": 2,
                            }
                        }
                    },
                    "bench": {"b": {}},
                }
            },
            {},
            r"^c.yaml: sweeps.g.serve.a.speculative.prompt_lookup_min: prompt_lookup_min 4 is "
            r"above prompt_lookup_max 2",
        ),
    ],
)
def test_planning_refuses_with_one_line_naming_the_key(sweeps, overlay, message):
    cfg = filled(sweeps, **overlay)
    with pytest.raises(UserError, match=message) as exc:
        plan.check_plan(cfg, CATALOG, "c.yaml")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("stack", ["serve-cpu", "serve-vllm"])
def test_speculative_plans_on_both_stacks(stack):
    spec = {
        "g": {
            "serve": {
                "ngram": {"speculative": {"method": "ngram", "prompt_lookup_max": 3}},
                "draft": {"speculative": {"method": "draft_model"}},
            },
            "bench": {"b": {}},
        }
    }
    device = "cpu" if stack == "serve-cpu" else "cuda"
    cfg = checked(spec, serve__stack=stack, serve__device=device)
    assert sweep.speculative(cfg, "g", "draft") == {
        "method": "draft_model",
        "num_speculative_tokens": 3,  # the schema's default
    }


@pytest.mark.parametrize(
    ("sweeps", "message"),
    [
        (
            {"g": {"serve": {"a": {"max_num_seq": 2}}, "bench": {"b": {}}}},
            r"^c.yaml: sweeps.g.serve.a.max_num_seq: unknown key; allowed here: block_size, "
            r"enable_prefix_caching, max_num_batched_tokens, max_num_seqs, speculative$",
        ),
        (
            {"g": {"serve": {"a": {}}, "bench": {"b": {"rate": 2}}}},
            r"^c.yaml: sweeps.g.bench.b.rate: unknown key",
        ),
        ({"g": {"serve": {}, "bench": {"b": {}}}}, r"^c.yaml: sweeps.g.serve: "),
        ({"g": {"bench": {"b": {}}}}, r"^c.yaml: sweeps.g: 'serve' is a required property"),
        (
            {"g": {"serve": {"a": {"speculative": {"method": "eagle"}}}, "bench": {"b": {}}}},
            r"^c.yaml: sweeps.g.serve.a.speculative.method: 'eagle' is not one of",
        ),
    ],
)
def test_schema_errors_name_the_key(sweeps, message):
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["sweeps"] = sweeps
    with pytest.raises(UserError, match=message):
        plan.check_config(cfg, SCHEMA, "c.yaml")
