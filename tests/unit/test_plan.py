import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from llmbuild import catalog, plan
from llmbuild.errors import UserError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "src/llmbuild/schema.yaml").read_text())
CATALOG = ROOT / "config/catalog.yaml"


def filled(cfg=None):
    cfg = copy.deepcopy(
        cfg if cfg is not None else yaml.safe_load((ROOT / "config/config.yaml").read_text())
    )
    validate(cfg, str(ROOT / "src/llmbuild/schema.yaml"), set_default=True)
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


def hf_dir(path, layers=4):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(f'{{"num_hidden_layers": {layers}}}')
    (path / "tokenizer.json").write_text("{}")
    (path / "model.safetensors").write_text("")
    return str(path)


def test_supported_pair_passes_and_unsupported_scheme_differs_per_model(tmp_path):
    models = catalog.load(CATALOG)
    assert catalog.supports(models, "qwen2.5-14b", "w8a8")
    assert not catalog.supports(models, "qwen2.5-7b", "w8a8")
    assert catalog.supports(models, "qwen2.5-7b", "w4a16")
    cfg = filled(
        {
            "model": {"name": "qwen2.5-7b", "source": "hf", "path": hf_dir(tmp_path)},
            "quantize": {"schemes": ["w4a16-gptq"]},
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
    cfg = filled()
    assert plan.variant_model_dir(cfg, "m", "sft") == "results/m/sft/hf"
    assert plan.variant_model_dir(cfg, "m", "sft-w8a8") == "results/m/sft/quant/w8a8"
    with pytest.raises(UserError, match="train.phases: pretrain, sft"):
        plan.variant_model_dir(cfg, "m", "final")


def test_phase_chain():
    cfg = filled({"train": {"phases": ["sft"]}})
    plan.check_plan(cfg, CATALOG, "c.yaml")
    assert plan.previous_phase(cfg, "sft") == "base"
    assert plan.served_variants(cfg) == ["base", "sft", "sft-w8a8"]
    cfg = filled({"train": {"phases": ["pretrain"]}, "eval": {"variants": ["base", "pretrain"]}})
    plan.check_plan(cfg, CATALOG, "c.yaml")
    assert plan.served_variants(cfg) == ["base", "pretrain", "pretrain-w8a8"]
    assert plan.previous_phase(filled(), "sft") == "pretrain"


def test_a_variant_of_a_phase_not_in_the_chain_is_one_line():
    cfg = filled({"train": {"phases": ["pretrain"]}})  # eval.variants still names sft
    with pytest.raises(UserError) as err:
        plan.check_plan(cfg, CATALOG, "c.yaml")
    assert "eval.variants" in str(err.value) and "train.phases: pretrain" in str(err.value)


def test_schema_refuses_a_repeated_or_unknown_phase():
    for phases in (["sft", "sft"], ["rlhf"], []):
        cfg = filled({})
        cfg["train"]["phases"] = phases
        with pytest.raises(UserError, match="train.phases"):
            plan.check_config(cfg, SCHEMA, "c.yaml")


def test_data_parallel_needs_a_divisible_global_batch():
    cfg = filled({"train": {"dp": 2}})  # global 16 = micro 16: not a multiple of 16 x 2
    with pytest.raises(UserError, match="train.pretrain.global_batch_size"):
        plan.check_plan(cfg, CATALOG, "c.yaml")


def test_pipeline_split_fits_the_tiny_model():
    cfg = filled({"train": {"pp": 2, "pp_layers": [1, 3]}})
    plan.check_plan(cfg, CATALOG, "c.yaml")
    assert cfg["train"]["pp_layers"] == [1, 3]
    assert filled({})["train"]["pp_layers"] is None  # default: an even split


@pytest.mark.parametrize(
    ("train", "start"),
    [
        (
            {"pp": 3, "pp_layers": [1, 3]},
            "c.yaml: train.pp_layers: [1,3] has 2 stages but train.pp is 3",
        ),
        (
            {"pp": 2, "pp_layers": [1, 2]},
            "c.yaml: train.pp_layers: [1,2] sums to 3 but the model has 4",
        ),
        (
            {"pp": 3},
            "c.yaml: train.pp: pp=3 does not divide the model's 4 layers; set train.pp_layers",
        ),
        ({"pp": 5}, "c.yaml: train.pp: pp=5 is more than the model's 4 layers"),
    ],
)
def test_pipeline_split_errors_are_one_line_naming_the_field(train, start):
    with pytest.raises(UserError) as exc:
        plan.check_plan(filled({"train": train}), CATALOG, "c.yaml")
    msg = str(exc.value)
    assert msg.startswith(start) and "\n" not in msg


def test_pipeline_split_stage_of_zero_layers_is_a_schema_error():
    with pytest.raises(UserError, match=r"^c.yaml: train.pp_layers.1: 0 is less than"):
        plan.check_config({"train": {"pp": 2, "pp_layers": [4, 0]}}, SCHEMA, "c.yaml")


def test_pipeline_split_of_a_local_hf_model_uses_its_config(tmp_path):
    model = {"name": "my-model", "source": "hf", "path": hf_dir(tmp_path, 6)}
    ok = filled(
        {"model": model, "quantize": {"schemes": []}, "train": {"pp": 2, "pp_layers": [2, 4]}}
    )
    plan.check_plan(ok, CATALOG, "c.yaml")
    bad = filled(
        {"model": model, "quantize": {"schemes": []}, "train": {"pp": 2, "pp_layers": [1, 3]}}
    )
    with pytest.raises(UserError, match="sums to 4 but the model has 6 layers"):
        plan.check_plan(bad, CATALOG, "c.yaml")
    # a model directory that is not there is refused at planning, not left to training
    gone = filled(
        {
            "model": dict(model, path=str(tmp_path / "nowhere")),
            "quantize": {"schemes": []},
            "train": {"pp": 2, "pp_layers": [1, 3]},
        }
    )
    with pytest.raises(UserError, match="model.path: .*nowhere does not exist"):
        plan.check_plan(gone, CATALOG, "c.yaml")


def test_a_killed_run_resumes_only_in_its_own_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "results/tiny-llama/pretrain/mcore.partial"
    (work / "iter_0000050").mkdir(parents=True)
    (work / "llmbuild_train.json").write_text('{"args": {"tp": 1, "pp": 1}}')
    models = catalog.load(CATALOG)
    same, cfg = filled(), filled({"train": {"pp": 2}})
    plan.fill_layout(same, models)
    plan.fill_layout(cfg, models)
    plan.check_resume_layout(same, "c.yaml")  # the same layout: resumes
    with pytest.raises(UserError) as err:
        plan.check_resume_layout(cfg, "c.yaml")
    msg = str(err.value)
    assert msg.startswith("c.yaml: train.tp:") and "tp=1 pp=1 dp=1" in msg and "delete" in msg
    for d in work.glob("iter_*"):
        d.rmdir()
    plan.check_resume_layout(cfg, "c.yaml")  # nothing saved yet: starts over, no error


def test_unset_layout_comes_from_the_catalog():
    cfg = filled({"train": {"sft": {"micro_batch_size": 8, "global_batch_size": 32}}})
    plan.check_plan(cfg, CATALOG, "c.yaml")
    # tiny-llama's catalog row: tp 1, pp 1, micro batch 16; a set value is kept
    assert (cfg["train"]["tp"], cfg["train"]["pp"]) == (1, 1)
    assert cfg["train"]["pretrain"]["micro_batch_size"] == 16
    assert cfg["train"]["sft"]["micro_batch_size"] == 8
    models = catalog.load(CATALOG)
    npu = filled({"model": {"name": "llama2-13b"}, "train": {"device": "npu"}})
    plan.fill_layout(npu, models)
    rec = catalog.recommend(models, "llama2-13b", "full", 128)
    assert (npu["train"]["tp"], npu["train"]["pp"]) == (rec["tp"], rec["pp"]) != (1, 1)
    assert npu["train"]["pretrain"]["micro_batch_size"] == rec["mbs"]
    # on a CPU an 8-NPU recommendation does not apply: one process, one micro-batch a step
    cpu = filled({"model": {"name": "llama2-13b"}, "train": {"pretrain": {}}})
    cpu["train"]["pretrain"]["micro_batch_size"] = None
    plan.fill_layout(cpu, models)
    assert (cpu["train"]["tp"], cpu["train"]["pp"]) == (1, 1)
    assert (
        cpu["train"]["pretrain"]["micro_batch_size"]
        == cpu["train"]["pretrain"]["global_batch_size"]
    )


def test_a_dpo_phase_with_a_pipeline_is_refused():
    cfg = filled({"train": {"phases": ["sft", "dpo"], "pp": 2}})
    with pytest.raises(UserError, match="train.pp: a dpo phase trains with pp 1"):
        plan.check_plan(cfg, CATALOG, "c.yaml")


def test_bench_variants_pick_among_the_served_ones():
    cfg = filled()
    assert plan.bench_variants(cfg) == ["sft", "sft-w8a8"]  # null: every served one but base
    alone = filled({"eval": {"variants": ["base"]}, "quantize": {"schemes": []}})
    assert plan.bench_variants(alone) == ["base"]
    cfg = filled({"bench": {"variants": ["sft-w8a8"]}})
    plan.check_plan(cfg, CATALOG, "c.yaml")
    assert plan.bench_variants(cfg) == ["sft-w8a8"]
    cfg = filled({"bench": {"variants": ["sft-w4a16-gptq"]}})  # not in quantize.schemes
    with pytest.raises(UserError) as err:
        plan.check_plan(cfg, CATALOG, "c.yaml")
    assert "bench.variants" in str(err.value) and "served: base, sft, sft-w8a8" in str(err.value)
