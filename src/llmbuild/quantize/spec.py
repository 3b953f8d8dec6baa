"""What a quantization run is asked to do, validated before any model is loaded."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild import hfdir
from llmbuild.errors import UserError
from llmbuild.schema import default

# scheme -> (compressed-tensors preset, needs activation calibration, weight bits)
SCHEMES: dict[str, tuple[str, bool, int]] = {
    "W8A8": ("W8A8", True, 8),  # int8 per-channel weights, int8 per-token dynamic activations
    "W8A16": ("W8A16", False, 8),  # int8 per-channel weights, activations unquantized
    "W4A16": ("W4A16", False, 4),  # int4 group-128 weights, activations unquantized
}
NOT_YET = {
    "KV-INT8": "KV-cache int8 is not implemented yet",
    "KV_CACHE_INT8": "KV-cache int8 is not implemented yet",
}
ALGORITHMS = ("rtn", "gptq")
# Files the quantized directory must carry besides its weights (the seeds' warning).
REQUIRED_OUTPUT = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def check_scheme(scheme: str) -> str:
    key = scheme.upper()
    if key in NOT_YET:
        raise UserError(
            f"{scheme!r}: {NOT_YET[key]}; use one of {', '.join(SCHEMES)}", field="--scheme"
        )
    if key not in SCHEMES:
        raise UserError(
            f"unsupported scheme {scheme!r}; use one of {', '.join(SCHEMES)}", field="--scheme"
        )
    return key


def check_model_dir(model: Path) -> None:
    """The input must be a complete Hugging Face directory (``llmbuild.hfdir``), with the
    tokenizer files the quantized output carries (REQUIRED_OUTPUT), or it will not be served."""
    hfdir.check(model, field="--input", chat_template=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if not (Path(model) / name).is_file():
            raise UserError(
                f"has no {name}; copy the tokenizer files into the model directory "
                "(the quantized model could not be served without them)",
                path=model,
                field="--input",
            )


def _schema(key: str):
    """A field whose default is the config schema's ``quantize.<key>`` (the CLI's too)."""
    return field(default_factory=functools.partial(default, f"quantize.{key}"))


@dataclass(frozen=True)
class QuantSpec:
    """One quantization run. ``smoothing_strength`` None means no SmoothQuant; the defaults a
    config key sets are the schema's."""

    model: Path
    output: Path
    scheme: str = "W8A8"
    calib: Path | None = None
    smoothing_strength: float | None = _schema("smoothing_strength")
    algorithm: str = "rtn"
    num_samples: int = _schema("num_samples")
    seq_length: int = _schema("seq_length")
    seed: int = _schema("seed")
    scale_input: Path | None = None
    scale_output: Path | None = None
    dampening_frac: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", check_scheme(self.scheme))
        s = self.smoothing_strength
        if s is not None and not (0.0 < s < 1.0):
            raise UserError(
                f"{s} is outside (0, 1); 0.5 is the recommended start", field="--smoothing-strength"
            )
        if self.algorithm not in ALGORITHMS:
            raise UserError(
                f"unknown algorithm {self.algorithm!r}; use one of {', '.join(ALGORITHMS)}",
                field="--algorithm",
            )
        if self.num_samples < 1:
            raise UserError(f"{self.num_samples} must be >= 1", field="--num-samples")
        if self.seq_length < 8:
            raise UserError(f"{self.seq_length} must be >= 8", field="--seq-length")
        if not (0.0 <= self.dampening_frac < 1.0):
            raise UserError(f"{self.dampening_frac} must be in [0, 1)", field="--dampening-frac")
        if self.smoothing_strength is None and (self.scale_input or self.scale_output):
            raise UserError(
                "smoothing scales need SmoothQuant", field="--scale-input/--scale-output"
            )
        if self.scale_input is not None and not Path(self.scale_input).is_file():
            raise UserError(
                "scale file not found; make it with --scale-output first",
                path=self.scale_input,
                field="--scale-input",
            )
        if self.calib is None and self.needs_calibration:
            raise UserError(
                'a calibration file is required (JSONL of Alpaca records or {"text": ...})',
                field="--calib",
            )
        if self.calib is not None and not Path(self.calib).is_file():
            raise UserError("calibration file not found", path=self.calib, field="--calib")
        if Path(self.output).resolve() == Path(self.model).resolve():
            raise UserError(
                "output would overwrite the input model; choose another directory",
                path=self.output,
                field="--output",
            )

    @property
    def preset(self) -> str:
        return SCHEMES[self.scheme][0]

    @property
    def computes_scales(self) -> bool:
        return self.smoothing_strength is not None and self.scale_input is None

    @property
    def needs_calibration(self) -> bool:
        return self.computes_scales or self.algorithm == "gptq"
