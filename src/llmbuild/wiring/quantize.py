"""The quantize stage's wiring: its knobs as flags."""

from __future__ import annotations

from llmbuild.wiring.base import Base, cli_flags

QUANT_KEYS = ("smoothing_strength", "num_samples", "seq_length", "seed")


class QuantizeWiring(Base):
    def quant_flags(self) -> str:
        return cli_flags(self.config["quantize"], QUANT_KEYS)
