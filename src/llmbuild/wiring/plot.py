"""The plot stage's wiring: the benchmark plots' flags (the default runs, the dynamic runs,
each sweep's comparison and Pareto front)."""

from __future__ import annotations

from typing import Any

from llmbuild.serve import sweep
from llmbuild.wiring.base import Base, cli_flags, csv_list, join


class PlotWiring(Base):
    def labelled_flags(self, labels: list[str]) -> str:
        """A benchmark plot's flags: one label per input CSV, and the SLO lines."""
        return join(
            f"--labels {csv_list(labels)}",
            cli_flags(self.config["plot"], ["slo_ttft_ms", "slo_tpot_ms"]),
        )

    def plot_bench_flags(self) -> str:
        return self.labelled_flags(self.benched)

    def plot_dynamic_flags(self) -> str:
        return self.plot_bench_flags()

    def plot_sweep_flags(self, wildcards: Any) -> str:
        """One label per benchmark of the sweep: variant/serve setting/benchmark setting."""
        return self.labelled_flags([run.label for run in sweep.runs(self.config, wildcards.sweep)])

    def sweep_plots(self) -> list[str]:
        m = self.model
        return [
            f"results/{m}/plots/sweeps/{name}/{what}"
            for name in self.config.get("sweeps") or {}
            for what in ("pareto.png", "compare.png")
        ]
