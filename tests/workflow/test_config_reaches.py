"""Every config value reaches the step it configures, and only that step.

For every key of src/llmbuild/schema.yaml, the whole graph is dry-run (`-n -p --forceall`) with the
key changed, every shell command the rules emit is parsed with llmbuild's own argument parser,
and the steps whose parsed arguments (or executable) changed must be exactly the ones the
table below names. Keys that change which jobs exist (the model, the served variants, the
stacks) name the rules whose jobs appear or disappear as well. A schema key missing from the
table fails the test, so a new key cannot be added without saying where it goes.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import snakefork
import yaml

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
from llmbuild.cli import build_parser  # noqa: E402
from llmbuild.quantize.scales import FORMAT as SCALES_FORMAT  # noqa: E402

BENCH = {"bench_static", "bench_dynamic"}
CONSUMERS = {"eval_accuracy"} | BENCH
PARITY = {"gate_parity_hf2mg", "gate_parity_mg2hf"}
TOKENIZE = {"tokenize_pretrain", "tokenize_sft"}
# two LoRA adapters: the context of the LoRA keys (none by default, so they reach nothing)
LORA_CTX = {
    "train": {
        "lora": {
            "adapters": [
                {"name": "upper", "task": "uppercase"},
                {"name": "rev", "task": "reverse"},
            ]
        }
    }
}
LORA_SERVE = {"serve", "eval_lora", "bench_dynamic"}
# the steps that read the base model's directory (served; not benchmarked: bench.variants)
BASE_HF = {"hf2mg", "gate_parity_hf2mg", "mg2hf", "dataset_generate", "serve"} | TOKENIZE

# MindIE's config.json for every served variant (none by default)
MINDIE_CTX = {"mindie": {"enabled": True}}

# w8a8 (smoothed from the scale file) beside a scheme that calibrates itself
CALIBRATING = {"quantize": {"schemes": ["w8a8", "w4a16-gptq"]}}

# key -> (new value, rules whose arguments change[, context overlay applied to both runs]).
FLAGS: dict[str, tuple] = {
    "model.tiny.vocab_size": (600, {"tiny_model"}),
    "model.tiny.hidden_size": (256, {"tiny_model"}),
    "model.tiny.intermediate_size": (512, {"tiny_model"}),
    "model.tiny.num_layers": (2, {"tiny_model"}),
    "model.tiny.num_heads": (8, {"tiny_model"}),
    "model.tiny.num_kv_heads": (4, {"tiny_model"}),
    "model.tiny.max_position_embeddings": (1024, {"tiny_model"}),
    "model.tiny.seed": (1, {"tiny_model"}),
    "data.pretrain.text_key": ("content", {"tokenize_pretrain"}),
    "data.pretrain.num_docs": (10, {"synth_corpus"}),
    "data.pretrain.seed": (1, {"synth_corpus"}),
    "data.sft.format": (
        "openai",
        {"tokenize_sft"},
        {"data": {"sft": {"path": "in/sft.jsonl", "heldout": "in/heldout.jsonl"}}},
    ),
    "data.sft.task": ("reverse", {"synth_task"}),
    "data.sft.num_train": (10, {"synth_task"}),
    "data.sft.num_heldout": (10, {"synth_task"}),
    "data.sft.min_len": (2, {"synth_task"}),
    "data.sft.max_len": (9, {"synth_task"}),
    "data.sft.seed": (1, {"synth_task"}),
    "data.seq_length": (32, TOKENIZE),
    "data.overlong": ("truncate", {"tokenize_sft"}),
    "data.workers": (3, TOKENIZE),
    "data.eod_token": ("<|end|>", TOKENIZE),
    "train.nodes": (2, {"train"}, {"train": {"tp": 2}}),
    "train.tp": (2, {"hf2mg", "train"}),
    "train.pp": (2, {"hf2mg", "train"}),
    "train.pp_layers": ([1, 3], {"hf2mg", "train"}, {"train": {"pp": 2}}),
    "train.dp": (
        2,
        {"train"},
        {"train": {"pretrain": {"micro_batch_size": 8}, "sft": {"micro_batch_size": 16}}},
    ),
    "train.save_interval": (10, {"train"}),
    # the strength shapes the scale file only (w8a8 reads it through the file's bytes); the
    # calibration knobs reach the scale file and the schemes that calibrate themselves
    "quantize.smoothing_strength": (0.7, {"quantize_scales"}),
    "quantize.num_samples": (8, {"quantize_scales", "quantize"}, CALIBRATING),
    "quantize.seq_length": (64, {"quantize_scales", "quantize"}, CALIBRATING),
    "quantize.seed": (1, {"quantize_scales", "quantize"}, CALIBRATING),
    "quantize.calib": ("in/sft.jsonl", {"quantize_scales", "quantize"}, CALIBRATING),
    "serve.max_num_seqs": (4, {"serve"}),
    "serve.max_model_len": (256, {"serve"}),
    "serve.max_num_batched_tokens": (1024, {"serve"}),
    "serve.tensor_parallel_size": (2, {"serve"}),
    "serve.block_size": (32, {"serve"}),
    "serve.dtype": ("bfloat16", {"serve"}),
    "serve.gpu_memory_utilization": (0.8, {"serve"}, {"serve": {"kv_cache_space_gib": None}}),
    "serve.kv_cache_space_gib": (2, {"serve"}),
    "serve.enable_prefix_caching": (True, {"serve"}),
    "serve.enforce_eager": (False, {"serve"}),
    "serve.preload_engine": (False, {"serve"}),
    "serve.quantization": ("compressed-tensors", {"serve"}),
    "serve.kv_cache_dtype": ("fp8", {"serve"}),
    "serve.chat_template": ("in/template.jinja", {"serve"}),
    "serve.trust_remote_code": (True, {"serve"}),
    "serve.ready_timeout": (60, {"serve"} | CONSUMERS),
    "eval.max_tokens": (8, {"eval_accuracy"}),
    "eval.concurrency": (2, {"eval_accuracy"}),
    "bench.static.concurrency": ([1, 2], {"bench_static"}),
    "bench.static.input_len": (
        [16, 64],
        {"bench_static"},
        {"bench": {"static": {"input_len": [32, 32], "output_len": [16, 16]}}},
    ),
    "bench.static.output_len": ([8], {"bench_static"}),
    "bench.static.epochs": (3, {"bench_static"}),
    "bench.static.prefix_len": (16, {"bench_static"}),
    "bench.static.seed": (1, {"bench_static"}),
    "bench.dataset.num_requests": (50, {"dataset_generate"}),
    "bench.dataset.min_input": (4, {"dataset_generate"}),
    "bench.dataset.max_input": (80, {"dataset_generate"}),
    "bench.dataset.avg_input": (30, {"dataset_generate"}),
    "bench.dataset.std_input": (4, {"dataset_generate"}),
    "bench.dataset.min_output": (2, {"dataset_generate"}),
    "bench.dataset.max_output": (40, {"dataset_generate"}),
    "bench.dataset.avg_output": (20, {"dataset_generate"}),
    "bench.dataset.std_output": (2, {"dataset_generate"}),
    "bench.dataset.seed": (1, {"dataset_generate"}),
    "bench.dataset.max_prompt_tokens": (48, {"bench_dynamic"}),
    "bench.dataset.max_tokens": (96, {"bench_dynamic"}),
    "bench.dataset.output_len": (8, {"bench_dynamic"}),
    "bench.dynamic.request_rate": ([1, 4], {"bench_dynamic"}),
    "bench.dynamic.num_prompts": ([5], {"bench_dynamic"}),
    "bench.dynamic.max_concurrency": (2, {"bench_dynamic"}),
    "bench.dynamic.api": ("chat", {"bench_dynamic"}),
    "bench.dynamic.output_mode": ("natural", {"bench_dynamic"}),
    "bench.dynamic.speculative": (True, {"bench_dynamic"}),
    "bench.dynamic.lora_mix": ("upper=3,rev=1", {"bench_dynamic"}, LORA_CTX),
    "bench.dynamic.seed": (1, {"bench_dynamic"}),
    "plot.slo_ttft_ms": (1000, {"plot_bench", "plot_dynamic"} | BENCH),
    "plot.slo_tpot_ms": (100, {"plot_bench", "plot_dynamic"} | BENCH),
    "plot.slo_e2el_ms": (5000, BENCH),
    "gates.mode": ("warn", BENCH),
    "gates.max_failed_fraction": (0.1, CONSUMERS),
    "gates.parity": ("off", PARITY),
    "gates.parity_tolerance": (0.001, PARITY),
    "gates.quant_max_drop": (0.1, {"gate_quant"}),
    "gates.min_rate_fraction": (0.9, BENCH),
    "gates.max_lag_ms": (50, BENCH),
    "envs.python": ("python3.11", {"env"}),
    "serve.max_loras": (1, {"serve"}, LORA_CTX),
    "serve.max_lora_rank": (16, {"serve"}, LORA_CTX),
    "train.lora.rank": (16, {"train_lora", "serve"}, LORA_CTX),
    "train.lora.alpha": (32, {"train_lora"}, LORA_CTX),
    "train.lora.dropout": (0.1, {"train_lora"}, LORA_CTX),
    "train.lora.target_modules": (["linear_qkv", "linear_fc2"], {"train_lora"}, LORA_CTX),
    "train.lora.iters": (50, {"train_lora", "gate_train_lora"}, LORA_CTX),
    "train.lora.seq_length": (96, {"train_lora", "tokenize_lora"}, LORA_CTX),
    "mindie.model_name": ("DeepSeek-V3", {"mindie_config"}, MINDIE_CTX),
    "mindie.nodes": (2, {"mindie_config"}, {**MINDIE_CTX, "serve": {"tensor_parallel_size": 4}}),
    "mindie.npus_per_node": (4, {"mindie_config"}, MINDIE_CTX),
    "mindie.ip_address": ("10.0.0.1", {"mindie_config"}, MINDIE_CTX),
    "mindie.port": (2025, {"mindie_config"}, MINDIE_CTX),
    "mindie.management_port": (2026, {"mindie_config"}, MINDIE_CTX),
    "mindie.metrics_port": (2027, {"mindie_config"}, MINDIE_CTX),
    "mindie.container_work_dir": ("/data/work", {"mindie_config"}, MINDIE_CTX),
    "mindie.max_output_tokens": (64, {"mindie_config"}, MINDIE_CTX),
    "mindie.max_prefill_batch_size": (2, {"mindie_config"}, MINDIE_CTX),
}
for _key, _value in {
    "lr": 0.003,
    "min_lr": 0.00001,
    "warmup_iters": 5,
    "micro_batch_size": 8,
    "global_batch_size": 64,
    "weight_decay": 0.1,
    "seed": 7,
}.items():
    FLAGS[f"train.lora.{_key}"] = (_value, {"train_lora"}, LORA_CTX)
for _phase, _tok in (("pretrain", "tokenize_pretrain"), ("sft", "tokenize_sft")):
    for _key, _value in {
        "lr": 0.003,
        "min_lr": 0.00001,
        "warmup_iters": 5,
        "micro_batch_size": 8,
        "weight_decay": 0.1,
        "seed": 7,
    }.items():
        FLAGS[f"train.{_phase}.{_key}"] = (_value, {"train"})
    FLAGS[f"train.{_phase}.iters"] = (50, {"train", "gate_train"})
    FLAGS[f"train.{_phase}.global_batch_size"] = (64, {"train"})
    FLAGS[f"train.{_phase}.seq_length"] = (96, {"train", _tok})

DPO = {"train": {"phases": ["pretrain", "sft", "dpo"]}}  # a chain with preference training
for _key, _value in {
    "lr": 0.003,
    "min_lr": 0.00002,
    "warmup_iters": 6,
    "micro_batch_size": 8,
    "weight_decay": 0.1,
    "seed": 7,
    "global_batch_size": 64,
    "beta": 0.2,
}.items():
    FLAGS[f"train.dpo.{_key}"] = (_value, {"train"}, DPO)
FLAGS["train.dpo.iters"] = (50, {"train", "gate_train"}, DPO)
FLAGS["train.dpo.seq_length"] = (96, {"train", "tokenize_dpo"}, DPO)

# key -> (new value, rules whose arguments change, rules whose jobs appear or disappear[,
# context]): keys that choose what the graph builds.
STRUCTURE: dict[str, tuple] = {
    "model.name": ("llama2-7b", set(), "*"),
    "model.source": ("hf", BASE_HF, {"tiny_model"}, None, "in/hf"),
    "model.path": (
        "in/hf2",
        BASE_HF,
        set(),
        {"model": {"source": "hf", "path": "in/hf"}},
    ),
    "data.pretrain.path": ("in/corpus.txt", {"tokenize_pretrain", "tiny_model"}, {"synth_corpus"}),
    "data.sft.path": (
        "in/sft2.jsonl",
        {"tokenize_sft", "quantize_scales"},
        set(),
        {"data": {"sft": {"path": "in/sft.jsonl", "heldout": "in/heldout.jsonl"}}},
    ),
    "data.sft.heldout": ("in/heldout.jsonl", {"eval_accuracy"}, {"synth_task"}),
    "data.dpo.path": ("in/pref.jsonl", {"tokenize_dpo"}, {"synth_task"}, DPO),
    "quantize.schemes": ([], {"gate_summary", "plot_bench", "plot_dynamic", "eval_summary"}, "*"),
    # another build's scale file: no scale job here, w8a8 folds that file in
    "quantize.scale_input": ("in/scales.safetensors", {"quantize"}, {"quantize_scales"}),
    "serve.stack": ("serve-vllm", {"serve"}, {"env"}),
    "eval.variants": (["sft"], {"gate_summary", "eval_summary"}, "*"),
    "bench.variants": (["sft"], {"gate_summary", "plot_bench", "plot_dynamic"}, "*"),
    "bench.dataset.type": (
        "sharegpt",
        {"bench_dynamic"},
        {"dataset_generate"},
        None,
        "in/sharegpt.json",
    ),
    "bench.dataset.path": (
        "in/sharegpt2.json",
        {"bench_dynamic"},
        set(),
        {"bench": {"dataset": {"type": "sharegpt", "path": "in/sharegpt.json"}}},
    ),
    "bench.dynamic.enabled": (False, {"gate_summary"}, "*"),
    # a sweep adds its services, benchmarks and plots, and its benchmarks' verdicts to the
    # gate summary; it changes no other step
    "sweeps": (
        {"s": {"serve": {"a": {"max_num_seqs": 2}}, "bench": {"b": {"concurrency": [1]}}}},
        {"gate_summary"},
        {"serve_sweep", "bench_sweep", "plot_sweep"},
    ),
    # external environments: no env jobs, and the device checks move to results/checks/
    "envs.mode": ("external", "*", {"env", "device_check"}),
    # a device adds its environment check (results/<model>/checks/<device>.json), which
    # names the key that asked for it
    "train.device": ("cuda", {"train", "device_check"}, {"device_check"}),
    # SFT straight from the base: pretraining's jobs go, SFT starts from the base checkpoint
    "train.phases": (
        ["sft"],
        {"train", "plot_loss", "gate_summary"},
        {"tokenize_pretrain", "train", "gate_train"},
    ),
    "serve.device": ("cuda", {"serve"}, {"device_check"}),
    # adapters add their data, training, conversion, the LoRA service and its consumers, and
    # the HF conversion of the phase they adapt (pretrain)
    "train.lora.adapters": (
        LORA_CTX["train"]["lora"]["adapters"],
        {"eval_summary", "gate_summary"},
        {
            "synth_lora_task",
            "tokenize_lora",
            "train_lora",
            "gate_train_lora",
            "lora2hf",
            "mg2hf",
            "gate_parity_mg2hf",
            "eval_lora",
        }
        | LORA_SERVE,
    ),
    # from sft: the adapters train on it, the service serves it (its HF conversion exists, and
    # its base is evaluated by sft's own service, so pretrain's evaluation service goes too)
    "train.lora.from": (
        "sft",
        {"train_lora", "lora2hf"} | LORA_SERVE,
        {"mg2hf", "gate_parity_mg2hf", "serve"},
        LORA_CTX,
    ),
    # a second model: every one of its jobs and the comparison plots appear, and not one
    # argument of the first model's jobs changes
    "models": (
        [{"name": "tiny-llama"}, {"name": "tiny-llama-2", "quantize": {"schemes": []}}],
        set(),
        {
            "synth_corpus",
            "synth_task",
            "tiny_model",
            "dataset_generate",
            "tokenize_pretrain",
            "tokenize_sft",
            "hf2mg",
            "gate_parity_hf2mg",
            "train",
            "gate_train",
            "mg2hf",
            "gate_parity_mg2hf",
            "serve",
            "eval_accuracy",
            "eval_summary",
            "bench_static",
            "bench_dynamic",
            "gate_summary",
            "plot_bench",
            "plot_dynamic",
            "plot_loss",
            "audit_page",
            "plot_compare",
        },
    ),
    "mindie.enabled": (True, set(), {"mindie_config"}),
    "mindie.variants": (["sft"], set(), {"mindie_config"}, MINDIE_CTX),
    "train.lora.merge": (
        True,
        {"eval_summary", "gate_summary"},
        {"lora2hf", "serve", "eval_lora"},
        LORA_CTX,
    ),
}


def schema_keys() -> list[str]:
    schema = yaml.safe_load((ROOT / "src/llmbuild/schema.yaml").read_text())

    def walk(node: dict, prefix: str) -> list[str]:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if node.get("type") == "object" and "properties" in node:
            out = []
            for k, v in node["properties"].items():
                out += walk(v, f"{prefix}{k}.")
            return out
        return [prefix[:-1]]

    return walk(schema, "")


def nest(key: str, value) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("reach")
    shutil.copytree(ROOT / "config", wd / "config")
    shutil.copytree(ROOT / "envs", wd / "envs")
    inputs = wd / "in"
    for name in ("hf", "hf2"):
        hf = inputs / name
        hf.mkdir(parents=True)
        cfg = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4}
        (hf / "config.json").write_text(json.dumps(cfg))
        (hf / "tokenizer.json").write_text("{}")
        (hf / "model.safetensors").write_text("")
    (inputs / "corpus.txt").write_text("text\n")
    for name in ("sft.jsonl", "sft2.jsonl", "heldout.jsonl", "pref.jsonl"):
        (inputs / name).write_text('{"instruction": "a", "output": "b"}\n')
    for name in ("sharegpt.json", "sharegpt2.json"):
        (inputs / name).write_text("[]")
    (inputs / "template.jinja").write_text("{{ messages }}")
    meta = json.dumps({"__metadata__": {"format": SCALES_FORMAT, "smoothing_strength": "0.5"}})
    (inputs / "scales.safetensors").write_bytes(len(meta).to_bytes(8, "little") + meta.encode())
    return wd


def dry_run(workdir: Path, overlay: dict) -> dict[str, dict]:
    """{job (rule + output): parsed command} of the whole graph under ``overlay``."""
    name = f"overlay-{abs(hash(json.dumps(overlay, sort_keys=True)))}.yaml"
    (workdir / name).write_text(json.dumps(overlay))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "-n",
        "-p",
        "--forceall",
        "--cores",
        "2",
        "--configfile",
        "config/config.yaml",
        name,
    ]
    proc = snakefork.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir)
    assert proc.returncode == 0, (overlay, proc.stdout[-2000:], proc.stderr[-2000:])
    jobs = {}
    rule = output = None
    for line in proc.stdout.splitlines():
        text = line.strip()
        if re.fullmatch(r"(localrule|rule) \w+:", text):
            rule, output = text.split()[1][:-1], ""
        elif rule and text.startswith("output:"):
            output = text
        elif rule and line.startswith("Shell command: "):
            jobs[f"{rule} {output}"] = parse(line.removeprefix("Shell command: "))
            rule = None
    return jobs


_BASELINES: dict[str, dict] = {}
_LOCK = threading.Lock()


def baseline(workdir: Path, context: dict) -> dict[str, dict]:
    """The dry run of ``context`` alone (most keys share the empty one)."""
    key = json.dumps(context, sort_keys=True)
    with _LOCK:
        if key not in _BASELINES:
            _BASELINES[key] = dry_run(workdir, context)
        return _BASELINES[key]


def parse(shell: str | None) -> dict | None:
    """The command's executable prefix and llmbuild's parsed arguments."""
    if shell in (None, "None"):
        return None
    words = shlex.split(shell.split(" > ")[0])
    if words[0] == "exec":
        words = words[1:]
    if "-m" in words and words[words.index("-m") + 1] == "llmbuild":
        at = words.index("-m") + 2
    else:
        at = next(i for i, w in enumerate(words) if w.endswith("llmbuild")) + 1
    args = vars(build_parser(words[at]).parse_args(words[at:]))
    args.pop("func")
    return {"exe": words[:at], **args}


def compare(base: dict, changed: dict) -> tuple[set, set]:
    """(rules whose arguments changed, rules whose jobs appeared or disappeared)."""
    args = {k.split()[0] for k in base.keys() & changed.keys() if base[k] != changed[k]}
    jobs = {k.split()[0] for k in base.keys() ^ changed.keys()} - {"all"}
    return args, jobs


def test_every_schema_key_has_a_place():
    keys = set(schema_keys())
    assert keys == set(FLAGS) | set(STRUCTURE), (
        f"not in the table: {sorted(keys - set(FLAGS) - set(STRUCTURE))}; "
        f"not in the schema: {sorted(set(FLAGS) | set(STRUCTURE) - keys)}"
    )


def _case(workdir: Path, key: str) -> tuple[str, set, set, object, object]:
    if key in FLAGS:
        value, want_args, *rest = FLAGS[key]
        want_jobs: object = set()
    else:
        value, want_args, want_jobs, *rest = STRUCTURE[key]
    context = rest[0] if rest and rest[0] else {}
    change = nest(key, value)
    if len(rest) > 1:  # a structure key that needs a companion value
        change = merge(change, nest(key.rsplit(".", 1)[0] + ".path", rest[1]))
    base = baseline(workdir, context)
    new = dry_run(workdir, merge(context, change))
    got_args, got_jobs = compare(base, new)
    return key, got_args, got_jobs, want_args, want_jobs


def test_each_key_reaches_exactly_its_steps(workdir):
    keys = schema_keys()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda k: _case(workdir, k), keys))
    wrong = []
    for key, got_args, got_jobs, want_args, want_jobs in results:
        if want_args != "*" and got_args != want_args:
            wrong.append(
                f"{key}: arguments of {sorted(got_args)} changed, want {sorted(want_args)}"
            )
        if want_jobs == "*":
            if not got_jobs:
                wrong.append(f"{key}: the job set did not change")
        elif got_jobs != want_jobs:
            wrong.append(
                f"{key}: jobs of {sorted(got_jobs)} appeared/disappeared, want {sorted(want_jobs)}"
            )
    assert not wrong, "\n".join(wrong)


def test_booleans_reach_their_commands_both_ways(workdir):
    """A false boolean is said on the command line (--no-x), not left to the step's default."""
    for value in (True, False):
        jobs = dry_run(workdir, {"serve": {"enable_prefix_caching": value}})
        serve = [a for k, a in jobs.items() if k.startswith("serve ")]
        assert serve and all(a["enable_prefix_caching"] is value for a in serve)


def _train_jobs(jobs: dict[str, dict]) -> dict[str, dict]:
    return {a["mode"]: a for k, a in jobs.items() if k.startswith("train ")}


def test_a_phase_chain_trains_each_phase_from_the_previous_one(workdir):
    default = _train_jobs(baseline(workdir, {}))
    assert default["pretrain"]["input"] == "results/tiny-llama/base/mcore"
    assert default["sft"]["input"] == "results/tiny-llama/pretrain/mcore"
    assert default["sft"]["save_interval"] == 50  # train.save_interval reaches training

    sft_only = dry_run(workdir, {"train": {"phases": ["sft"]}})
    assert set(_train_jobs(sft_only)) == {"sft"}
    assert _train_jobs(sft_only)["sft"]["input"] == "results/tiny-llama/base/mcore"
    assert not [k for k in sft_only if "pretrain" in k]

    # pretraining alone: its model is the one quantized, served and evaluated
    only = {"train": {"phases": ["pretrain"]}, "eval": {"variants": ["base", "pretrain"]}}
    jobs = dry_run(workdir, only)
    assert set(_train_jobs(jobs)) == {"pretrain"}
    quant = [a for k, a in jobs.items() if k.startswith("quantize ")]
    assert [str(a["input"]) for a in quant] == ["results/tiny-llama/pretrain/hf"]
    served = {a["served_model_name"] for k, a in jobs.items() if k.startswith("serve ")}
    assert served == {"base", "pretrain", "pretrain-w8a8"}


def test_data_parallel_training_starts_a_rank_per_device(workdir):
    ctx = {"train": {"pretrain": {"micro_batch_size": 8}, "sft": {"micro_batch_size": 16}}}
    jobs = _train_jobs(dry_run(workdir, merge(ctx, {"train": {"dp": 2}})))
    exe = " ".join(jobs["pretrain"]["exe"])
    assert "torchrun" in exe and "--nproc_per_node 2" in exe
    assert jobs["pretrain"]["dp"] == 2


def test_a_dpo_phase_trains_from_the_sft_checkpoint_on_preference_shards(workdir):
    jobs = dry_run(workdir, DPO)
    dpo = _train_jobs(jobs)["dpo"]
    assert (dpo["input"], dpo["data"]) == (
        "results/tiny-llama/sft/mcore",
        "results/tiny-llama/shards/dpo",
    )
    assert dpo["beta"] == 0.1 and dpo["seq_length"] == 64
    tok = [a for k, a in jobs.items() if k.startswith("tokenize_dpo ")]
    assert tok[0]["kind"] == "dpo" and tok[0]["input"].endswith("task/preference.jsonl")
    # the last phase is the one quantized
    assert [str(a["input"]) for k, a in jobs.items() if k.startswith("quantize ")] == [
        "results/tiny-llama/dpo/hf"
    ]
