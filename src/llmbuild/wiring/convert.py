"""The convert stage's wiring: the pipeline split flag and the parity gates' flags and memory."""

from __future__ import annotations

from typing import Any

from llmbuild.wiring.base import Base, cli_flags, csv_list


class ConvertWiring(Base):
    def pp_layers_flag(self) -> str:
        """` --pp-layers a,b,...` when train.pp_layers sets an uneven pipeline split."""
        layers = self.config["train"]["pp_layers"]
        return f" --pp-layers {csv_list(layers)}" if layers else ""

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
