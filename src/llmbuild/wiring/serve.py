"""The serve stage's wiring: the served model of a variant, the proofs a service waits for, its
flags; and the services of the sweeps (one per served variant and serve setting).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from llmbuild import plan
from llmbuild.serve import mindie, sweep
from llmbuild.wiring.base import Base, cli_flags, join

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
    "preload_engine",
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
        return plan.variant_model_dir(self.config, wildcards.model, wildcards.variant)

    def serve_inputs(self, wildcards: Any) -> dict[str, Any]:
        inputs: dict[str, Any] = {
            "model": self.serve_model(wildcards),
            "proofs": self.variant_gates(wildcards),
            "adapters": self.lora_adapter_dirs(wildcards),  # type: ignore[attr-defined]
        }
        if self.config["serve"]["chat_template"]:
            inputs["chat_template"] = self.config["serve"]["chat_template"]
        return inputs

    def serve_flags(self, overrides: Mapping[str, Any] | None = None) -> str:
        """The service's knobs: serve.* (with ``overrides``, a sweep's serve setting)."""
        return cli_flags({**self.config["serve"], **(overrides or {})}, SERVE_KEYS)

    # --- sweeps ---------------------------------------------------------------------------

    def sweep_serve_inputs(self, wildcards: Any) -> dict[str, Any]:
        """A sweep service's model and proofs (a quantized variant's accuracy gate too, as
        for a benchmark's service), and the draft model of a draft_model setting."""
        inputs = self.serve_inputs(wildcards)
        inputs["proofs"] = self.proven_variant_gates(wildcards)  # type: ignore[attr-defined]
        spec = sweep.speculative(self.config, wildcards.sweep, wildcards.setting)
        if spec and spec["method"] == "draft_model":
            inputs["draft"] = self._draft_dir(wildcards)
        return inputs

    def _draft_dir(self, wildcards: Any) -> str:
        draft = sweep.draft_variant(wildcards.variant)
        if draft == "base" and self.config["model"]["source"] == "hf":
            return self.config["model"]["path"]
        return plan.variant_model_dir(self.config, wildcards.model, draft)

    def sweep_serve_flags(self, wildcards: Any) -> str:
        """The serve setting's knobs over serve.*, and its speculative decoding."""
        values = sweep.serve_values(self.config, wildcards.sweep, wildcards.setting)
        spec = sweep.speculative(self.config, wildcards.sweep, wildcards.setting)
        extra = ""
        if spec:
            draft = self._draft_dir(wildcards) if spec["method"] == "draft_model" else None
            extra = "--speculative-config " + shlex.quote(sweep.speculative_json(spec, draft))
        return join(cli_flags(values, SERVE_KEYS), extra)

    @staticmethod
    def sweep_endpoint(wildcards: Any) -> str:
        """The service a sweep's benchmark talks to: its (variant, serve setting)'s."""
        w = wildcards
        return f"results/{w.model}/sweeps/{w.sweep}/{w.variant}/{w.setting}/service.json"

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

    # --- MindIE ---------------------------------------------------------------------------

    def mindie_variants(self) -> list[str]:
        """The served variants a MindIE config.json is written for (mindie.variants, or every
        served one); none unless mindie.enabled."""
        m = self.config["mindie"]
        if not m["enabled"]:
            return []
        return list(dict.fromkeys(m["variants"] if m["variants"] is not None else self.served))

    def mindie_targets(self, model: str) -> list[str]:
        return [f"results/{model}/mindie/{v}/config.json" for v in self.mindie_variants()]

    def mindie_inputs(self, wildcards: Any) -> dict[str, Any]:
        """The variant's model and what proves it, as for a benchmark's service (a quantized
        variant's accuracy gate too)."""
        proofs = self.proven_variant_gates(wildcards)  # type: ignore[attr-defined]
        return {"model": self.serve_model(wildcards), "proofs": proofs}

    def mindie_flags(self, wildcards: Any) -> str:
        m = self.config["mindie"]
        name = m["model_name"] or self.config["model"]["name"]
        return join(
            f"--model-name {shlex.quote(name)}",
            cli_flags(self.config["serve"], mindie.SERVE_KEYS),
            cli_flags(m, mindie.KEYS),
        )
