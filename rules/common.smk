import os
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

SRC_DIR = os.path.relpath(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC_DIR)
from llmbuild.errors import UserError  # noqa: E402
from llmbuild import plan  # noqa: E402

CONFIG_SOURCE = plan.display_path(
    (workflow.overwrite_configfiles or ["config/config.yaml"])[-1]
)
SCHEMA = Path(workflow.basedir) / "config" / "schema.yaml"
CATALOG = Path(workflow.basedir) / "config" / "catalog.yaml"

try:
    plan.check_config(config, yaml.safe_load(SCHEMA.read_text()), CONFIG_SOURCE)
    validate(config, str(SCHEMA), set_default=True)
    plan.check_plan(config, CATALOG, CONFIG_SOURCE)
except UserError as exc:
    sys.exit(f"llmbuild: error: {exc}")

MODEL = config["model"]["name"]
SERVED = plan.served_variants(config)


wildcard_constraints:
    model=r"[a-z0-9._-]+",
    phase=r"base|pretrain|sft",
    variant=r"[a-z0-9._-]+",
    consumer=r"eval|bench",
    scheme=r"[a-z0-9_]+",
    stack=r"[a-z0-9-]+",
    split=r"train|heldout",


# --- environments -------------------------------------------------------------------------


def env_marker(stack):
    """The graph node a rule depends on for its environment (none in external mode)."""
    if config["envs"]["mode"] == "external":
        return []
    return f".envs/{stack}/ready.json"


def llmbuild(stack):
    """The llmbuild command inside a stack's environment."""
    if config["envs"]["mode"] == "external":
        return "llmbuild"
    return f".envs/{stack}/bin/llmbuild"


def serve_stack():
    return config["serve"]["stack"]


# --- parallel training ----------------------------------------------------------------------
# These return literal pieces of the hf2mg and train commands, so with tp = pp = 1 and an even
# split the commands (and Snakemake's code rerun trigger) are exactly the single-process ones.

TRAIN_RANKS = config["train"]["tp"] * config["train"]["pp"]


def pp_layers_flag():
    """` --pp-layers a,b,...` when train.pp_layers sets an uneven pipeline split, else ''."""
    layers = config["train"]["pp_layers"]
    return f" --pp-layers {csv_list(layers)}" if layers else ""


def train_launcher():
    """The train stack's `llmbuild`, or with tp * pp > 1 torchrun starting one `llmbuild` per
    tensor/pipeline rank."""
    if TRAIN_RANKS == 1:
        return llmbuild("train")
    exe = "torchrun"
    if config["envs"]["mode"] != "external":
        exe = ".envs/train/bin/torchrun"
    return f"{exe} --standalone --nproc_per_node {TRAIN_RANKS} -m llmbuild"


def train_log_flag():
    """torchrun's own parser takes `--log` for its --log-dir, so under it the flag is
    spelled `--train-log`."""
    return "--log" if TRAIN_RANKS == 1 else "--train-log"


def train_rank_threads():
    """`--threads` of each rank: the job's threads shared out, at least 1 per rank."""
    if TRAIN_RANKS == 1:
        return "{threads}"
    n = TRAIN_RANKS
    return f"$(( {{threads}} > {n} ? {{threads}} / {n} : 1 ))"


# --- inputs ---------------------------------------------------------------------------------


def get_corpus():
    return config["data"]["pretrain"]["path"] or "results/data/corpus.jsonl"


def get_sft_train():
    return config["data"]["sft"]["path"] or "results/data/task/train.jsonl"


def get_sft_heldout():
    return config["data"]["sft"]["heldout"] or "results/data/task/heldout.jsonl"


def get_sft_format():
    return (
        config["data"]["sft"]["format"] if config["data"]["sft"]["path"] else "alpaca"
    )


def task_params(wildcards):
    """The synthetic task's knobs that shape this split (the held-out split ignores num_train,
    so more training examples leave evaluation's input untouched)."""
    keys = ["task", "num_train", "num_heldout", "min_len", "max_len", "seed"]
    params = {k: config["data"]["sft"][k] for k in keys}
    if wildcards.split == "heldout":
        params["num_train"] = 1
    return params


def get_base_hf(wildcards):
    if config["model"]["source"] == "hf":
        return config["model"]["path"]
    return f"results/{wildcards.model}/base/hf"


def get_train_load(wildcards):
    prev = {"pretrain": "base", "sft": "pretrain"}[wildcards.phase]
    return f"results/{wildcards.model}/{prev}/mcore"


def get_shards(wildcards):
    return f"results/{wildcards.model}/shards/{wildcards.phase}"


def get_serve_model(wildcards):
    if wildcards.variant == "base" and config["model"]["source"] == "hf":
        return config["model"]["path"]
    return plan.variant_model_dir(wildcards.model, wildcards.variant)


def train_param(name):
    """A training knob of the rule's phase."""

    def get(wildcards):
        return config["train"][wildcards.phase][name]

    get.__name__ = f"train_{name}"
    return get


def csv_list(values):
    return ",".join(str(v) for v in values)


# --- targets --------------------------------------------------------------------------------


def get_final_targets():
    targets = [
        f"results/{MODEL}/plots/bench.png",
        f"results/{MODEL}/plots/loss.png",
        f"results/{MODEL}/eval/summary.json",
    ]
    if config["bench"]["dynamic"]["enabled"]:
        targets += expand(
            "results/{model}/bench/{variant}/dynamic.csv", model=MODEL, variant=SERVED
        )
    return targets


# --- serving --------------------------------------------------------------------------------

_SERVE_NOT_FLAGS = ("stack", "ready_timeout")


def serve_flags():
    """`llmbuild serve run` flags from config["serve"] (booleans as switches, nulls left out)."""
    flags = []
    for key, value in config["serve"].items():
        if key in _SERVE_NOT_FLAGS or value is None or value is False:
            continue
        flag = f"--{key.replace('_', '-')}"
        flags.append(flag if value is True else f"{flag} {value}")
    return " ".join(flags)


def endpoint_for(consumer):
    """The service a consumer talks to. Each consumer (eval, bench) gets its own fresh server:
    a service's endpoint file is temporary, so Snakemake reruns every consumer of a service
    it restarts; separate services keep a benchmark change from rerunning the evaluation, and
    keep one consumer's cache state (prefix caching) out of the other's measurements."""

    def get(wildcards):
        return f"results/{wildcards.model}/serve/{wildcards.variant}/{consumer}.json"

    get.__name__ = f"endpoint_{consumer}"
    return get


def get_eval_results(wildcards):
    return expand(
        "results/{model}/eval/{variant}/accuracy.json",
        model=wildcards.model,
        variant=SERVED,
    )


def get_bench_csvs(wildcards):
    return expand(
        "results/{model}/bench/{variant}/static.csv",
        model=wildcards.model,
        variant=SERVED,
    )


def get_train_logs(wildcards):
    return expand(
        "results/{model}/{phase}/train_log.jsonl",
        model=wildcards.model,
        phase=["pretrain", "sft"],
    )


# --- benchmarks -----------------------------------------------------------------------------


def _flags(section, keys):
    """`--key value` flags of config[...] entries (booleans as switches, nulls left out)."""
    flags = []
    for key in keys:
        value = section[key]
        if value is None or value is False:
            continue
        flag = f"--{key.replace('_', '-')}"
        flags.append(flag if value is True else f"{flag} {value}")
    return " ".join(flags)


def dataset_generate_flags():
    keys = ["num_requests", "seed"]
    for side in ("input", "output"):
        keys += [f"{stat}_{side}" for stat in ("min", "max", "avg", "std")]
    return _flags(config["bench"]["dataset"], keys)


def get_bench_dataset(wildcards):
    ds = config["bench"]["dataset"]
    if ds["type"] == "generated":
        return f"results/{wildcards.model}/bench/datasets/generated.jsonl"
    if not ds["path"]:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(
            f"{CONFIG_SOURCE}: bench.dataset.path: dataset type {ds['type']!r} needs a file;"
            " set path or use type: generated"
        )
    return ds["path"]


def bench_dynamic_flags():
    dyn, ds = config["bench"]["dynamic"], config["bench"]["dataset"]
    kind = "custom" if ds["type"] == "generated" else ds["type"]
    flags = [
        f"--request-rate {csv_list(dyn['request_rate'])}",
        f"--num-prompts {csv_list(dyn['num_prompts'])}",
        f"--dataset-type {kind}",
        _flags(dyn, ["max_concurrency", "api", "output_mode", "speculative", "seed"]),
        _flags(ds, ["max_prompt_tokens", "max_tokens", "output_len"]),
    ]
    if dyn["lora_mix"]:
        flags.append(f"--lora-mix '{dyn['lora_mix']}'")
    return " ".join(f for f in flags if f)
