"""The quantize stage's wiring: the SmoothQuant scale file, what each scheme reads, its flags.

Each scheme gets the flags it uses and nothing else, so a knob reruns only the variants it
shapes: the smoothing strength reaches the scale file (and through its bytes the schemes
that fold it in); the calibration sample count, length and seed reach the scale file and the
schemes that calibrate (GPTQ, AWQ, the KV-cache scales); w8a16 reads neither.
"""

from __future__ import annotations

import re
from typing import Any

from llmbuild.quantize.schemes import SCHEMES
from llmbuild.wiring.base import Base, cli_flags

CALIB_KEYS = ("num_samples", "seq_length", "seed")
SCALES_NAME = "smoothquant.safetensors"


class QuantizeWiring(Base):
    @staticmethod
    def scheme_pattern() -> str:
        """The scheme wildcard's regex: the scheme names, nothing else (so `scales` is never
        a scheme and the scale file never collides with a variant's directory)."""
        return "|".join(re.escape(s) for s in SCHEMES)

    def own_model_pattern(self) -> str:
        """The models whose scale files this graph makes: a quantize.scale_input naming
        another build's file is read as it is, never rebuilt with this config."""
        return re.escape(self.model)

    def scales_path(self, model: str, phase: str) -> str:
        """The scale file a smoothing scheme folds in: quantize.scale_input, or this graph's."""
        return self.config["quantize"]["scale_input"] or self.graph_scales_path(model, phase)

    @staticmethod
    def graph_scales_path(model: str, phase: str) -> str:
        return f"results/{model}/{phase}/quant/scales/{SCALES_NAME}"

    def quant_calib(self, wildcards: Any) -> str:
        """Calibration data: quantize.calib, else the SFT training split."""
        return self.config["quantize"]["calib"] or self.sft_train(wildcards)  # type: ignore[attr-defined]

    def quant_inputs(self, wildcards: Any) -> dict[str, str]:
        """What the scheme reads besides the model: calibration data and/or the scale file."""
        scheme = SCHEMES[wildcards.scheme]
        inputs = {}
        if scheme.calibrates:
            inputs["calib"] = self.quant_calib(wildcards)
        if scheme.smoothing:
            inputs["scales"] = self.scales_path(wildcards.model, wildcards.phase)
        return inputs

    def quant_flags(self, wildcards: Any) -> str:
        """The scheme's flags: --calib and the calibration knobs when it calibrates,
        --scale-input when it smooths."""
        scheme = SCHEMES[wildcards.scheme]
        flags = []
        if scheme.calibrates:
            flags.append(f"--calib {self.quant_calib(wildcards)}")
            flags.append(cli_flags(self.config["quantize"], CALIB_KEYS))
        if scheme.smoothing:
            flags.append(f"--scale-input {self.scales_path(wildcards.model, wildcards.phase)}")
        return " ".join(flags)

    def scales_flags(self) -> str:
        return cli_flags(self.config["quantize"], ("smoothing_strength", *CALIB_KEYS))
