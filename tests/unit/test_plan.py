import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from llmbuild import catalog, plan
from llmbuild.errors import UserError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
CATALOG = ROOT / "config/catalog.yaml"


def filled(cfg=None):
    cfg = copy.deepcopy(
        cfg if cfg is not None else yaml.safe_load((ROOT / "config/config.yaml").read_text())
    )
    validate(cfg, str(ROOT / "config/schema.yaml"), set_default=True)
    return cfg


def test_default_config_is_valid_and_filled():
    cfg = filled()
    plan.check_config(cfg, SCHEMA, "config/config.yaml")
    plan.check_plan(cfg, CATALOG, "config/config.yaml")
    assert cfg["train"]["sft"]["min_lr"] == 0.0001  # default from $defs/phase
    assert cfg["serve"]["trust_remote_code"] is False
    assert plan.served_variants(cfg) == ["base", "sft", "sft-w8a8"]


def test_empty_config_gets_every_default():
    cfg = filled({})
    assert cfg["model"]["name"] == "tiny-llama"
    assert cfg["quantize"]["smoothing_strength"] == 0.5
    assert cfg["bench"]["static"]["concurrency"] == [1, 2, 4]


def test_unknown_key_names_file_and_dotted_field():
    with pytest.raises(UserError) as exc:
        plan.check_config({"train": {"sft": {"lrr": 1}}}, SCHEMA, "my.yaml")
    msg = str(exc.value)
    assert msg.startswith("my.yaml: train.sft.lrr: unknown key; allowed here: ")
    assert "lr," in msg and "\n" not in msg


def test_unknown_top_level_key():
    with pytest.raises(UserError, match=r"^c.yaml: bogus: unknown key"):
        plan.check_config({"bogus": 1}, SCHEMA, "c.yaml")


def test_bad_enum_value():
    with pytest.raises(UserError, match=r"c.yaml: train.device: 'tpu' is not one of"):
        plan.check_config({"train": {"device": "tpu"}}, SCHEMA, "c.yaml")


def test_unsupported_quantization_pair_is_refused():
    cfg = filled({"model": {"name": "mistral-7b", "source": "hf", "path": "/x"}})
    with pytest.raises(UserError) as exc:
        plan.check_plan(cfg, CATALOG, "c.yaml")
    assert str(exc.value).startswith(
        "c.yaml: quantize.schemes: model 'mistral-7b' does not support w8a8"
    )


def test_supported_pair_passes_and_unsupported_scheme_differs_per_model():
    models = catalog.load(CATALOG)
    assert catalog.supports(models, "qwen2.5-14b", "w8a8")
    assert not catalog.supports(models, "qwen2.5-7b", "w8a8")
    assert catalog.supports(models, "qwen2.5-7b", "w4a16")
    cfg = filled(
        {
            "model": {"name": "qwen2.5-7b", "source": "hf", "path": "/x"},
            "quantize": {"schemes": ["w4a16"]},
        }
    )
    plan.check_plan(cfg, CATALOG, "c.yaml")


def test_catalog_recommendation_from_seeds_table():
    models = catalog.load(CATALOG)
    rec = catalog.recommend(models, "llama2-13b", "full", 4096)
    assert (rec["tp"], rec["pp"], rec["mbs"], rec["nodes"]) == (8, 1, 4, 1)
    assert catalog.recommend(models, "llama2-13b", "full", 8192)["mbs"] == 2
    assert catalog.recommend(models, "no-such-model") is None


def test_bench_pairs_must_match():
    cfg = filled({"bench": {"static": {"input_len": [32, 64], "output_len": [16]}}})
    with pytest.raises(UserError, match="bench.static.output_len"):
        plan.check_plan(cfg, CATALOG, "c.yaml")


def test_variant_dirs():
    assert plan.variant_model_dir("m", "sft") == "results/m/sft/hf"
    assert plan.variant_model_dir("m", "sft-w8a8") == "results/m/sft/quant/w8a8"
    with pytest.raises(UserError):
        plan.variant_model_dir("m", "final")
