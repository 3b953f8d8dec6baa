"""The model stage's wiring: the base model's directory (made or the user's) and the tiny model's
flags.
"""

from __future__ import annotations

from typing import Any

from llmbuild.wiring.base import Base, cli_flags

TINY_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "max_position_embeddings",
    "seed",
)


class ModelWiring(Base):
    def base_hf(self, wildcards: Any) -> str:
        if self.config["model"]["source"] == "hf":
            return self.config["model"]["path"]
        return f"results/{wildcards.model}/base/hf"

    def tiny_flags(self) -> str:
        return cli_flags(self.config["model"]["tiny"], TINY_KEYS)
