"""The convert stage's wiring: the pipeline split flag and the parity gates' flags and memory."""

from __future__ import annotations

from typing import Any

from llmbuild.wiring.base import Base, cli_flags


class ConvertWiring(Base):
    def layout_flags(self) -> str:
        """The parallel layout a checkpoint is written in and trained at (train.tp, train.pp,
        train.pp_layers): hf2mg and training must agree on it."""
        return cli_flags(self.config["train"], ["tp", "pp", "pp_layers"])

    def quant_gate_flags(self) -> str:
        return cli_flags(self.config["gates"], ["quant_max_drop"], {"quant_max_drop": "max_drop"})

    def parity_flags(self) -> str:
        return cli_flags(
            self.config["gates"],
            ["parity", "parity_tolerance"],
            {"parity": "mode", "parity_tolerance": "tolerance"},
        )

    @staticmethod
    def parity_mem_mb(wildcards: Any, input: Any) -> int:  # noqa: A002 (Snakemake's name)
        """Memory of a parity gate: one model at a time in float32 (a 16-bit checkpoint
        doubles) plus the interpreter, torch and megatron-core."""
        from pathlib import Path

        size = sum(f.stat().st_size for f in Path(input.hf).glob("*.safetensors"))
        return max(4000, 4 * size // 2**20 + 1500)
