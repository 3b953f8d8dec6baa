"""The eval stage's wiring: the consumer's knobs and the per-variant results."""

from __future__ import annotations

from typing import Any

from llmbuild.wiring.base import Base, cli_flags, join


class EvalWiring(Base):
    def eval_flags(self) -> str:
        return join(
            cli_flags(self.config["eval"], ["max_tokens", "concurrency"]),
            cli_flags(self.config["gates"], ["max_failed_fraction"]),
        )

    def eval_results(self, wildcards: Any) -> list[str]:
        served = [f"results/{wildcards.model}/eval/{v}/accuracy.json" for v in self.served]
        return served + self.lora_eval_results(wildcards.model)  # type: ignore[attr-defined]
