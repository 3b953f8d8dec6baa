"""The plot stage's wiring: the benchmark plot's flags."""

from __future__ import annotations

from llmbuild.wiring.base import Base, cli_flags, csv_list, join


class PlotWiring(Base):
    def plot_bench_flags(self) -> str:
        return join(
            f"--labels {csv_list(self.served)}",
            cli_flags(self.config["plot"], ["slo_ttft_ms", "slo_tpot_ms"]),
        )
