"""What a quantization run is asked to do, validated before any model is loaded."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from llmbuild import hfdir
from llmbuild.errors import UserError
from llmbuild.quantize.schemes import Scheme, get
from llmbuild.schema import default

# Files the quantized directory must carry besides its weights (the seeds' warning).
REQUIRED_OUTPUT = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


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


def check_strength(s: float | None) -> None:
    if s is not None and not (0.0 < s < 1.0):
        raise UserError(
            f"{s} is outside (0, 1); 0.5 is the recommended start", field="--smoothing-strength"
        )


def _check_calibration(calib: Path | None, num_samples: int, seq_length: int, needed: bool):
    if num_samples < 1:
        raise UserError(f"{num_samples} must be >= 1", field="--num-samples")
    if seq_length < 8:
        raise UserError(f"{seq_length} must be >= 8", field="--seq-length")
    if calib is None and needed:
        raise UserError(
            'a calibration file is required (JSONL of Alpaca records or {"text": ...})',
            field="--calib",
        )
    if calib is not None and not Path(calib).is_file():
        raise UserError("calibration file not found", path=calib, field="--calib")


def _check_output(model: Path, output: Path) -> None:
    if Path(output).resolve() == Path(model).resolve():
        raise UserError(
            "output would overwrite the input model; choose another directory",
            path=output,
            field="--output",
        )


@dataclass(frozen=True)
class QuantSpec:
    """One quantization run of one scheme (llmbuild.quantize.schemes).

    Smoothing (w8a8 only) comes from ``scale_input`` (a file `llmbuild quantize scales`
    made) or is computed here with ``smoothing_strength`` (and written to ``scale_output``
    when given); a scheme without smoothing refuses both. The defaults a config key sets are
    the schema's."""

    model: Path
    output: Path
    scheme: str = "w8a8"
    calib: Path | None = None
    smoothing_strength: float | None = None
    num_samples: int = _schema("num_samples")
    seq_length: int = _schema("seq_length")
    seed: int = _schema("seed")
    scale_input: Path | None = None
    scale_output: Path | None = None
    dampening_frac: float = 0.01

    def __post_init__(self) -> None:
        s = get(self.scheme)
        object.__setattr__(self, "scheme", s.name)
        check_strength(self.smoothing_strength)
        smooth_args = [
            flag
            for flag, v in (
                ("--scale-input", self.scale_input),
                ("--scale-output", self.scale_output),
                ("--smoothing-strength", self.smoothing_strength),
            )
            if v is not None
        ]
        if not s.smoothing and smooth_args:
            kind = "weight-only" if s.weight_only else "a KV-cache scheme"
            raise UserError(
                f"{s.name} is {kind} and gets no SmoothQuant smoothing; drop "
                f"{' and '.join(smooth_args)}",
                field=smooth_args[0],
            )
        if s.smoothing and self.scale_input is None and self.smoothing_strength is None:
            raise UserError(
                f"{s.name} needs SmoothQuant scales: pass --scale-input FILE (made by "
                "`llmbuild quantize scales`) or --smoothing-strength to compute them here",
                field="--scale-input",
            )
        if self.scale_input is not None and not Path(self.scale_input).is_file():
            raise UserError(
                "scale file not found; make it with `llmbuild quantize scales` first",
                path=self.scale_input,
                field="--scale-input",
            )
        if self.scale_input is not None and self.scale_output is not None:
            raise UserError(
                "scales read from --scale-input are not written again; drop --scale-output",
                field="--scale-output",
            )
        if not (0.0 <= self.dampening_frac < 1.0):
            raise UserError(f"{self.dampening_frac} must be in [0, 1)", field="--dampening-frac")
        _check_calibration(self.calib, self.num_samples, self.seq_length, self.needs_calibration)
        _check_output(self.model, self.output)

    @property
    def spec(self) -> Scheme:
        return get(self.scheme)

    @property
    def computes_scales(self) -> bool:
        return self.spec.smoothing and self.scale_input is None

    @property
    def needs_calibration(self) -> bool:
        return self.computes_scales or self.spec.calibrates


@dataclass(frozen=True)
class ScalesSpec:
    """SmoothQuant scales of a model, computed from calibration data, as their own file."""

    model: Path
    output: Path
    calib: Path
    smoothing_strength: float = _schema("smoothing_strength")
    num_samples: int = _schema("num_samples")
    seq_length: int = _schema("seq_length")
    seed: int = _schema("seed")

    def __post_init__(self) -> None:
        check_strength(self.smoothing_strength)
        _check_calibration(self.calib, self.num_samples, self.seq_length, True)
        if Path(self.output).suffix != ".safetensors":
            raise UserError(
                "a scale file is safetensors: name it *.safetensors",
                path=self.output,
                field="--output",
            )
