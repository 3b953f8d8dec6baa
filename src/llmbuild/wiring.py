"""How the graph's rules get their inputs and command lines from the config.

One contract for every rule: a config value reaches its step as a flag of the step's
`llmbuild` command, named after the key (`max_num_seqs` -> `--max-num-seqs`) and emitted
explicitly whatever its value: booleans as `--x` / `--no-x`, lists comma-joined, null left out
(the command's own default then applies, which is the schema's "unset").
`tests/workflow/test_config_reaches.py` parses every emitted command with llmbuild's own parser
and checks that each key reaches exactly its steps.

``Wiring(config)`` is made once by rules/common.smk; its methods are the rules' parameter and
input functions (those taking ``wildcards`` are Snakemake input/params functions). Pure Python,
no Snakemake import, so it is unit-testable.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from llmbuild import plan

TINY_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "max_position_embeddings",
    "seed",
)
TASK_KEYS = ("task", "num_train", "num_heldout", "min_len", "max_len", "seed")
PHASE_KEYS = (
    "iters",
    "lr",
    "min_lr",
    "warmup_iters",
    "micro_batch_size",
    "global_batch_size",
    "seq_length",
    "weight_decay",
    "seed",
)
SERVE_KEYS = (
    "device",
    "dtype",
    "max_num_seqs",
    "max_model_len",
    "max_num_batched_tokens",
    "tensor_parallel_size",
    "block_size",
    "gpu_memory_utilization",
    "kv_cache_space_gib",
    "enable_prefix_caching",
    "enforce_eager",
    "quantization",
    "kv_cache_dtype",
    "chat_template",
    "trust_remote_code",
    "ready_timeout",
)
QUANT_KEYS = ("smoothing_strength", "num_samples", "max_seq_length", "seed")
STATIC_KEYS = ("concurrency", "input_len", "output_len", "epochs", "prefix_len", "seed")
DYNAMIC_KEYS = (
    "request_rate",
    "num_prompts",
    "max_concurrency",
    "api",
    "output_mode",
    "speculative",
    "lora_mix",
    "seed",
)
DATASET_FILTER_KEYS = ("max_prompt_tokens", "max_tokens", "output_len")
DATASET_KEYS = ("num_requests", "seed") + tuple(
    f"{stat}_{side}" for side in ("input", "output") for stat in ("min", "max", "avg", "std")
)


def csv_list(values: Iterable[Any]) -> str:
    return ",".join(str(v) for v in values)


def cli_flags(
    section: Mapping[str, Any], keys: Iterable[str], rename: Mapping[str, str] | None = None
) -> str:
    """`--key value` flags of ``section`` (a config mapping) for ``keys``."""
    rename = rename or {}
    flags = []
    for key in keys:
        value = section[key]
        if value is None:
            continue
        flag = "--" + rename.get(key, key).replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            flags.append(f"{flag} {csv_list(value)}")
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


class Wiring:
    """The rules' input and flag functions over one (validated) config."""

    def __init__(self, config: Mapping[str, Any]):
        self.config = config
        self.model = config["model"]["name"]
        self.served = plan.served_variants(dict(config))
        self.train_ranks = config["train"]["tp"] * config["train"]["pp"]

    # --- environments ---------------------------------------------------------------------

    def env_marker(self, stack: str) -> list[str] | str:
        """The graph node a rule depends on for its environment (none in external mode)."""
        if self.config["envs"]["mode"] == "external":
            return []
        return f".envs/{stack}/ready.json"

    def llmbuild(self, stack: str) -> str:
        """The llmbuild command inside a stack's environment."""
        if self.config["envs"]["mode"] == "external":
            return "llmbuild"
        return f".envs/{stack}/bin/llmbuild"

    def serve_stack(self) -> str:
        return self.config["serve"]["stack"]

    # --- inputs ---------------------------------------------------------------------------

    # The synthetic inputs live under their model's results, so experiments with other data
    # settings (another model's scenario) never overwrite each other's.

    def corpus(self, wildcards: Any) -> str:
        return (
            self.config["data"]["pretrain"]["path"]
            or f"results/{wildcards.model}/data/corpus.jsonl"
        )

    def sft_train(self, wildcards: Any) -> str:
        return (
            self.config["data"]["sft"]["path"] or f"results/{wildcards.model}/data/task/train.jsonl"
        )

    def sft_heldout(self, wildcards: Any) -> str:
        return (
            self.config["data"]["sft"]["heldout"]
            or f"results/{wildcards.model}/data/task/heldout.jsonl"
        )

    def base_hf(self, wildcards: Any) -> str:
        if self.config["model"]["source"] == "hf":
            return self.config["model"]["path"]
        return f"results/{wildcards.model}/base/hf"

    def serve_model(self, wildcards: Any) -> str:
        if wildcards.variant == "base" and self.config["model"]["source"] == "hf":
            return self.config["model"]["path"]
        return plan.variant_model_dir(wildcards.model, wildcards.variant)

    # --- data -----------------------------------------------------------------------------

    def synth_corpus_flags(self) -> str:
        return cli_flags(self.config["data"]["pretrain"], ["num_docs", "seed"])

    def task_flags(self, wildcards: Any) -> str:
        """The synthetic task's knobs that shape this split (the held-out split ignores
        num_train, so more training examples leave evaluation's input untouched)."""
        params = {k: self.config["data"]["sft"][k] for k in TASK_KEYS}
        if wildcards.split == "heldout":
            params["num_train"] = 1
        return cli_flags(params, TASK_KEYS)

    def tiny_flags(self) -> str:
        return cli_flags(self.config["model"]["tiny"], TINY_KEYS)

    def shard_seq_length(self, phase: str) -> int:
        """The length each shard set is checked against: data.seq_length when set (planning
        refuses one above the SFT phase's), else the length its training phase runs at."""
        return self.config["data"]["seq_length"] or self.config["train"][phase]["seq_length"]

    def sft_format(self) -> str:
        sft = self.config["data"]["sft"]
        return sft["format"] if sft["path"] else "alpaca"

    def tokenize_flags(self, phase: str) -> str:
        data = self.config["data"]
        own = (
            cli_flags(data["pretrain"], ["text_key"])
            if phase == "pretrain"
            else _join(f"--format {self.sft_format()}", cli_flags(data, ["overlong"]))
        )
        return _join(
            f"--seq-length {self.shard_seq_length(phase)}",
            cli_flags(data, ["workers", "eod_token"]),
            own,
        )

    # --- conversion and gates ---------------------------------------------------------------

    def pp_layers_flag(self) -> str:
        """` --pp-layers a,b,...` when train.pp_layers sets an uneven pipeline split."""
        layers = self.config["train"]["pp_layers"]
        return f" --pp-layers {csv_list(layers)}" if layers else ""

    def parity_flags(self) -> str:
        return cli_flags(
            self.config["gates"],
            ["parity", "parity_tolerance"],
            {"parity": "mode", "parity_tolerance": "tolerance"},
        )

    @staticmethod
    def parity_mem_mb(wildcards: Any, input: Any) -> int:  # noqa: A002 (Snakemake's name)
        """Memory of a parity gate: one model at a time in float32 (a 16-bit checkpoint
        doubles) plus the interpreter, torch and megatron-core."""
        from pathlib import Path

        size = sum(f.stat().st_size for f in Path(input.hf).glob("*.safetensors"))
        return max(4000, 4 * size // 2**20 + 1500)

    def gate_path(self, model: str, gate: str, subject: str) -> str:
        return f"results/{model}/gates/{gate}/{subject}.json"

    def parity_gate(self, model: str, phase: str) -> str:
        """The verdict proving ``phase``'s converted checkpoint (base: HF -> Megatron; trained
        phases: Megatron -> HF)."""
        if phase == "base":
            return self.gate_path(model, "parity", "base-hf2mg")
        return self.gate_path(model, "parity", f"{phase}-mg2hf")

    def variant_gates(self, wildcards: Any) -> list[str]:
        """What proves a served variant's model before a service starts on it: the parity of
        its reconversion; for a quantized variant's benchmark also its accuracy gate (its
        evaluation then comes first)."""
        phase, _, scheme = wildcards.variant.partition("-")
        gates = [] if phase == "base" else [self.parity_gate(wildcards.model, phase)]
        if scheme and getattr(wildcards, "consumer", None) == "bench":
            gates.append(self.gate_path(wildcards.model, "quant", wildcards.variant))
        return gates

    def all_gates(self, wildcards: Any) -> list[str]:
        """Every verdict of the default target's graph, for the summary table."""
        model = wildcards.model
        phases = {"base"} | {v.partition("-")[0] for v in self.served}
        out = [self.parity_gate(model, p) for p in sorted(phases)]
        out += [self.gate_path(model, "train", p) for p in ("pretrain", "sft")]
        out += [self.gate_path(model, "quant", v) for v in self.served if v.partition("-")[2]]
        out += [self.gate_path(model, "requests", f"{v}-eval") for v in self.served]
        kinds = ["static"] + (["dynamic"] if self.config["bench"]["dynamic"]["enabled"] else [])
        out += [self.gate_path(model, "bench", f"{v}-{k}") for v in self.served for k in kinds]
        return out

    # --- training ---------------------------------------------------------------------------

    def train_launcher(self) -> str:
        """The train stack's `llmbuild`, or with tp * pp > 1 torchrun starting one `llmbuild`
        per tensor/pipeline rank."""
        if self.train_ranks == 1:
            return self.llmbuild("train")
        exe = "torchrun"
        if self.config["envs"]["mode"] != "external":
            exe = ".envs/train/bin/torchrun"
        return f"{exe} --standalone --nproc_per_node {self.train_ranks} -m llmbuild"

    def train_log_flag(self) -> str:
        """torchrun's own parser takes `--log` for its --log-dir, so under it the flag is
        spelled `--train-log`."""
        return "--log" if self.train_ranks == 1 else "--train-log"

    def train_rank_threads(self) -> str:
        """`--threads` of each rank: the job's threads shared out, at least 1 per rank."""
        if self.train_ranks == 1:
            return "{threads}"
        n = self.train_ranks
        return f"$(( {{threads}} > {n} ? {{threads}} / {n} : 1 ))"

    def train_inputs(self, wildcards: Any) -> dict[str, str]:
        """The checkpoint a phase starts from, the proof of that checkpoint, its shards."""
        prev = {"pretrain": "base", "sft": "pretrain"}[wildcards.phase]
        if prev == "base":
            proof = self.parity_gate(wildcards.model, "base")
        else:
            proof = self.gate_path(wildcards.model, "train", prev)
        return {
            "load": f"results/{wildcards.model}/{prev}/mcore",
            "proof": proof,
            "data": f"results/{wildcards.model}/shards/{wildcards.phase}",
        }

    def phase_flags(self, wildcards: Any) -> str:
        """The phase's knobs; `iters` is the command's `--train-iters`."""
        return cli_flags(
            self.config["train"][wildcards.phase], PHASE_KEYS, {"iters": "train_iters"}
        )

    def phase_iters(self, wildcards: Any) -> int:
        return self.config["train"][wildcards.phase]["iters"]

    # --- quantization -----------------------------------------------------------------------

    def quant_flags(self) -> str:
        return cli_flags(self.config["quantize"], QUANT_KEYS)

    # --- serving ----------------------------------------------------------------------------

    def serve_inputs(self, wildcards: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "model": self.serve_model(wildcards),
            "proofs": self.variant_gates(wildcards),
        }
        if self.config["serve"]["chat_template"]:
            inputs["chat_template"] = self.config["serve"]["chat_template"]
        return inputs

    def serve_flags(self) -> str:
        return cli_flags(self.config["serve"], SERVE_KEYS)

    @staticmethod
    def endpoint(consumer: str) -> Any:
        """The service a consumer talks to. Each consumer (eval, bench) gets its own fresh
        server: a service's endpoint file is temporary, so Snakemake reruns every consumer of
        a service it restarts; separate services keep a benchmark change from rerunning the
        evaluation, and keep one consumer's cache state out of the other's measurements."""

        def get(wildcards: Any) -> str:
            return f"results/{wildcards.model}/serve/{wildcards.variant}/{consumer}.json"

        get.__name__ = f"endpoint_{consumer}"
        return get

    # --- consumers --------------------------------------------------------------------------

    def eval_flags(self) -> str:
        return _join(
            cli_flags(self.config["eval"], ["max_tokens", "concurrency"]),
            cli_flags(self.config["gates"], ["max_failed_fraction"]),
        )

    def bench_gate_flags(self) -> str:
        """The validity gate's thresholds, and the SLOs goodput is measured against."""
        return _join(
            cli_flags(
                self.config["gates"],
                ["max_failed_fraction", "min_rate_fraction", "max_lag_ms", "mode"],
                {"mode": "gate_mode"},
            ),
            cli_flags(self.config["plot"], ["slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms"]),
        )

    def bench_static_flags(self) -> str:
        return _join(
            cli_flags(self.config["bench"]["static"], STATIC_KEYS), self.bench_gate_flags()
        )

    def dataset_generate_flags(self) -> str:
        return cli_flags(self.config["bench"]["dataset"], DATASET_KEYS)

    def bench_dataset(self, wildcards: Any) -> str:
        ds = self.config["bench"]["dataset"]
        if ds["type"] == "generated":
            return f"results/{wildcards.model}/bench/datasets/generated.jsonl"
        return ds["path"]

    def bench_dynamic_flags(self) -> str:
        ds = self.config["bench"]["dataset"]
        kind = "custom" if ds["type"] == "generated" else ds["type"]
        return _join(
            f"--dataset-type {kind}",
            cli_flags(self.config["bench"]["dynamic"], DYNAMIC_KEYS),
            cli_flags(ds, DATASET_FILTER_KEYS),
            self.bench_gate_flags(),
        )

    def eval_results(self, wildcards: Any) -> list[str]:
        return [f"results/{wildcards.model}/eval/{v}/accuracy.json" for v in self.served]

    def bench_csvs(self, wildcards: Any) -> list[str]:
        return [f"results/{wildcards.model}/bench/{v}/static.csv" for v in self.served]

    def plot_bench_flags(self) -> str:
        return _join(
            f"--labels {csv_list(self.served)}",
            cli_flags(self.config["plot"], ["slo_ttft_ms", "slo_tpot_ms"]),
        )

    def train_logs(self, wildcards: Any) -> list[str]:
        return [f"results/{wildcards.model}/{p}/train_log.jsonl" for p in ("pretrain", "sft")]

    # --- targets ----------------------------------------------------------------------------

    def final_targets(self) -> list[str]:
        m = self.model
        targets = [
            f"results/{m}/plots/bench.png",
            f"results/{m}/plots/loss.png",
            f"results/{m}/eval/summary.json",
            f"results/{m}/gates/summary.json",
        ]
        if self.config["bench"]["dynamic"]["enabled"]:
            targets += [f"results/{m}/bench/{v}/dynamic.csv" for v in self.served]
        return targets
