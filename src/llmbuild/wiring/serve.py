"""The serve stage's wiring: the served model of a variant, the proofs a service waits for, its
flags.
"""

from __future__ import annotations

from typing import Any

from llmbuild import plan
from llmbuild.wiring.base import Base, cli_flags

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


class ServeWiring(Base):
    def serve_model(self, wildcards: Any) -> str:
        if self.is_lora_variant(wildcards.variant):  # type: ignore[attr-defined]
            return self.lora_serve_model(wildcards)  # type: ignore[attr-defined]
        if wildcards.variant == "base" and self.config["model"]["source"] == "hf":
            return self.config["model"]["path"]
        return plan.variant_model_dir(wildcards.model, wildcards.variant)

    def serve_inputs(self, wildcards: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "model": self.serve_model(wildcards),
            "proofs": self.variant_gates(wildcards),
            "adapters": self.lora_adapter_dirs(wildcards),  # type: ignore[attr-defined]
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
