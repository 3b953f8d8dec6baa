"""The bench stage's wiring: the benchmarks' knobs, their dataset, the validity thresholds;
and the benchmarks of the sweeps (each serve setting's service x each benchmark setting)."""

from __future__ import annotations

from typing import Any

from llmbuild.serve import sweep
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

    def bench_csv_paths(self, model: str, kind: str) -> list[str]:
        """The ``kind`` (static or dynamic) CSV of each benchmarked variant, in order."""
        return [f"results/{model}/bench/{v}/{kind}.csv" for v in self.benched]

    def bench_csvs(self, wildcards: Any) -> list[str]:
        return self.bench_csv_paths(wildcards.model, "static")

    @staticmethod
    def keep_on_failure(kind: str) -> Any:
        """Where a failed benchmark's records are kept (logs/, beside its log)."""

        def get(wildcards: Any) -> str:
            w = wildcards
            if kind == "sweep":
                return (
                    f"logs/{w.model}/sweeps/{w.sweep}/{w.variant}/{w.setting}/failed-{w.workload}"
                )
            return f"logs/{w.model}/bench/{w.variant}/failed-{kind}"

        get.__name__ = f"keep_on_failure_{kind}"
        return get

    def dynamic_csvs(self, wildcards: Any) -> list[str]:
        return self.bench_csv_paths(wildcards.model, "dynamic")

    # --- sweeps ---------------------------------------------------------------------------

    def sweep_bench_flags(self, wildcards: Any) -> str:
        """The benchmark setting's knobs over bench.static.*; a speculative service's
        benchmark counts output tokens from the server's usage (--speculative)."""
        values = sweep.bench_values(self.config, wildcards.sweep, wildcards.workload)
        spec = sweep.speculative(self.config, wildcards.sweep, wildcards.setting)
        values["speculative"] = spec is not None
        return join(
            cli_flags(values, (*STATIC_KEYS, *sweep.WORKLOAD_KEYS, "speculative")),
            self.bench_gate_flags(),
        )

    def sweep_bench_threads(self, wildcards: Any) -> int:
        """Cores a sweep benchmark holds. Snakemake runs a service with all its consumers at
        once and sums their threads, but the consumers measure one at a time (each holds the
        service's benchmark lock), so the first benchmark setting holds the one core they
        share and the rest none: a sweep of any width fits a 2-core machine."""
        first = next(iter(self.config["sweeps"][wildcards.sweep]["bench"]))
        return 1 if wildcards.workload == first else 0

    def sweep_csvs(self, wildcards: Any) -> list[str]:
        m = wildcards.model
        return [
            f"results/{m}/{run.service.dir}/{run.workload}.csv"
            for run in sweep.runs(self.config, wildcards.sweep)
        ]
