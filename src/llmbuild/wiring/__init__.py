"""How the graph's rules get their inputs and command lines from the config: one module per
stage (``wiring/<stage>.py``, beside ``rules/<stage>.smk``), one contract (``wiring/base.py``).

``Wiring(config)`` is made once by rules/common.smk; its methods are the rules' parameter and
input functions (those taking ``wildcards`` are Snakemake input/params functions). Pure Python,
no Snakemake import, so it is unit-testable.
"""

from __future__ import annotations

from llmbuild.wiring.base import cli_flags, csv_list
from llmbuild.wiring.bench import BenchWiring
from llmbuild.wiring.cluster import ClusterWiring
from llmbuild.wiring.convert import ConvertWiring
from llmbuild.wiring.data import DataWiring
from llmbuild.wiring.eval import EvalWiring
from llmbuild.wiring.gates import GatesWiring
from llmbuild.wiring.lora import LoraWiring
from llmbuild.wiring.model import ModelWiring
from llmbuild.wiring.plot import PlotWiring
from llmbuild.wiring.quantize import QuantizeWiring
from llmbuild.wiring.serve import ServeWiring
from llmbuild.wiring.train import TrainWiring

__all__ = ["Wiring", "cli_flags", "csv_list"]


class Wiring(
    DataWiring,
    ModelWiring,
    ConvertWiring,
    GatesWiring,
    TrainWiring,
    QuantizeWiring,
    ServeWiring,
    EvalWiring,
    BenchWiring,
    PlotWiring,
    ClusterWiring,
    LoraWiring,
):
    """Every stage's wiring over one (validated) config."""

    def final_targets(self) -> list[str]:
        m = self.model
        targets = [
            f"results/{m}/plots/bench.png",
            f"results/{m}/plots/loss.png",
            f"results/{m}/eval/summary.json",
            f"results/{m}/gates/summary.json",
            f"results/{m}/audit/index.html",
        ]
        if self.config["bench"]["dynamic"]["enabled"]:
            targets += [f"results/{m}/bench/{v}/dynamic.csv" for v in self.benched]
            targets.append(f"results/{m}/plots/dynamic.png")
        return targets + self.sweep_plots() + self.lora_targets(m) + self.mindie_targets(m)
