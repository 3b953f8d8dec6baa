"""The bench stage's wiring: the benchmarks' knobs, their dataset, the validity thresholds."""

from __future__ import annotations

from typing import Any

from llmbuild.wiring.base import Base, cli_flags, join

STATIC_KEYS = ("concurrency", "input_len", "output_len", "epochs", "prefix_len", "seed")
DYNAMIC_KEYS = (
    "request_rate",
    "num_prompts",
    "max_concurrency",
    "api",
    "output_mode",
    "speculative",
    "seed",
)
DATASET_FILTER_KEYS = ("max_prompt_tokens", "max_tokens", "output_len")
DATASET_KEYS = ("num_requests", "seed") + tuple(
    f"{stat}_{side}" for side in ("input", "output") for stat in ("min", "max", "avg", "std")
)


class BenchWiring(Base):
    def bench_gate_flags(self) -> str:
        """The validity gate's thresholds, and the SLOs goodput is measured against."""
        return join(
            cli_flags(
                self.config["gates"],
                ["max_failed_fraction", "min_rate_fraction", "max_lag_ms", "mode"],
                {"mode": "gate_mode"},
            ),
            cli_flags(self.config["plot"], ["slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms"]),
        )

    def bench_static_flags(self) -> str:
        return join(cli_flags(self.config["bench"]["static"], STATIC_KEYS), self.bench_gate_flags())

    def dataset_generate_flags(self) -> str:
        return cli_flags(self.config["bench"]["dataset"], DATASET_KEYS)

    def bench_dataset(self, wildcards: Any) -> str:
        ds = self.config["bench"]["dataset"]
        if ds["type"] == "generated":
            return f"results/{wildcards.model}/bench/datasets/generated.jsonl"
        return ds["path"]

    def bench_dynamic_flags(self, wildcards: Any) -> str:
        """The dynamic benchmark's knobs; the LoRA service's (variant lora) also its LoRA mix
        (bench.dynamic.lora_mix, see wiring/lora.py)."""
        ds = self.config["bench"]["dataset"]
        kind = "custom" if ds["type"] == "generated" else ds["type"]
        mix = ""
        if wildcards.variant == "lora":
            mix = f"--lora-mix {self.lora_mix()}"  # type: ignore[attr-defined]
        return join(
            f"--dataset-type {kind}",
            cli_flags(self.config["bench"]["dynamic"], DYNAMIC_KEYS),
            mix,
            cli_flags(ds, DATASET_FILTER_KEYS),
            self.bench_gate_flags(),
        )

    def bench_csvs(self, wildcards: Any) -> list[str]:
        return [f"results/{wildcards.model}/bench/{v}/static.csv" for v in self.served]
