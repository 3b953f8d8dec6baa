"""`llmbuild quantize <verb>`: SmoothQuant scales, and each scheme with llm-compressor.

    llmbuild quantize scales --input HF --calib C --output scales.safetensors   # once
    llmbuild quantize run --scheme w8a8 --input HF --scale-input scales.safetensors --output Q
    llmbuild quantize run --scheme w4a16-gptq --input HF --calib C --output Q
    llmbuild quantize smoothquant ...     # the seeds' one step: scales (or --scale-input) + W8A8

No heavy import here: torch, transformers and llmcompressor load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llmbuild.quantize.schemes import SCHEMES
from llmbuild.schema import default


def _knob(p: argparse.ArgumentParser, key: str, kind: type, text: str, **kw) -> None:
    """A flag a config key sets: named after ``quantize.<key>``, with the schema's default."""
    flag = "--" + key.replace("_", "-")
    kw.setdefault("default", default(f"quantize.{key}"))
    p.add_argument(flag, type=kind, help=f"{text}; default %(default)s", **kw)


def _io(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("--input", type=Path, required=True, help="Hugging Face model directory")
    p.add_argument("--output", type=Path, required=True, help=output_help)


def _calibration(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--calib",
        type=Path,
        required=required,
        help='calibration JSONL: Alpaca records or {"text": ...} per line',
    )
    _knob(p, "num_samples", int, "calibration samples (seeded)")
    _knob(p, "seq_length", int, "tokens per calibration sample")
    _knob(p, "seed", int, "calibration sampling and torch seed")


def register(verbs) -> None:
    s = verbs.add_parser(
        "scales",
        help="SmoothQuant smoothing scales of a model, as their own file (the seeds' "
        "--generate-scale --scale-output)",
        description="Calibrate llm-compressor's SmoothQuantModifier on the float model and "
        "write the per-channel smoothing scales (safetensors, one vector per smoothed layer, "
        "with the layers it balances); `quantize run --scale-input` folds them in.",
    )
    _io(s, "scale file (*.safetensors)")
    _calibration(s, required=True)
    _knob(s, "smoothing_strength", float, "SmoothQuant alpha in (0, 1)")
    s.set_defaults(func=_scales)

    r = verbs.add_parser(
        "run",
        help="quantize with one scheme: " + ", ".join(SCHEMES),
        description="Quantize with llm-compressor's oneshot and save compressed-tensors. "
        + "; ".join(f"{n}: {sc.description}" for n, sc in SCHEMES.items())
        + ". Only w8a8 is smoothed (from --scale-input, or computed with "
        "--smoothing-strength).",
    )
    _io(r, "quantized model directory (compressed-tensors safetensors)")
    r.add_argument("--scheme", required=True, help=f"one of {', '.join(SCHEMES)}")
    _calibration(r)
    r.add_argument("--scale-input", type=Path, help="SmoothQuant scale file to fold in (w8a8)")
    r.add_argument(
        "--scale-output", type=Path, help="write scales computed here to this file (w8a8)"
    )
    r.add_argument(
        "--smoothing-strength",
        type=float,
        help="compute the SmoothQuant scales here with this alpha (w8a8 without --scale-input)",
    )
    r.add_argument("--dampening-frac", type=float, default=0.01, help="GPTQ dampening")
    r.set_defaults(func=_run)

    p = verbs.add_parser(
        "smoothquant",
        help="the seeds' SmoothQuant W8A8 in one step: scales (or --scale-input), then int8",
        description="SmoothQuant (per-channel smoothing folded into the weights) followed by "
        "W8A8 with llm-compressor: int8 per-channel weights, int8 per-token dynamic "
        "activations; saved in compressed-tensors format. Same as `quantize run --scheme "
        "w8a8` with --smoothing-strength.",
    )
    _io(p, "quantized model directory (compressed-tensors safetensors)")
    _calibration(p)
    p.add_argument("--scheme", default="w8a8", choices=["w8a8", "W8A8"], help="w8a8")
    _knob(p, "smoothing_strength", float, "SmoothQuant alpha in (0, 1)")
    p.add_argument(
        "--scale-output", type=Path, help="write the smoothing scales to this safetensors file"
    )
    p.add_argument(
        "--scale-input",
        type=Path,
        help="reuse smoothing scales from this file instead of computing them",
    )
    p.set_defaults(func=_smoothquant, dampening_frac=0.01)


def _log(msg: str) -> None:
    print(f"[llmbuild quantize] {msg}", file=sys.stderr, flush=True)


def _recorder(args: argparse.Namespace, command: str, inputs: list, started: float):
    from llmbuild import provenance

    arg_dict = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
    }

    def record(path: Path, extra: dict[str, object]) -> None:
        provenance.write(
            path,
            command=command,
            args=arg_dict,
            inputs=[p for p in inputs if p is not None],
            started=started,
            extra=extra,
        )

    return record


def _scales(args: argparse.Namespace) -> int:
    started = time.time()
    from llmbuild.quantize.spec import ScalesSpec

    spec = ScalesSpec(
        model=args.input,
        output=args.output,
        calib=args.calib,
        smoothing_strength=args.smoothing_strength,
        num_samples=args.num_samples,
        seq_length=args.seq_length,
        seed=args.seed,
    )
    from llmbuild.quantize import run

    _log(f"SmoothQuant scales (alpha {spec.smoothing_strength}) of {spec.model}")
    record = _recorder(args, "llmbuild quantize scales", [spec.model, spec.calib], started)
    samples, tokens, layers = run.make_scales(spec, record=record)
    _log(
        f"wrote {spec.output} in {time.time() - started:.1f}s: {layers} smoothed layers from "
        f"{samples} samples, {tokens} tokens"
    )
    return 0


def _quantize(args: argparse.Namespace, command: str, smoothing_strength: float | None) -> int:
    started = time.time()
    from llmbuild.quantize.spec import QuantSpec

    spec = QuantSpec(
        model=args.input,
        output=args.output,
        scheme=args.scheme,
        calib=args.calib,
        smoothing_strength=smoothing_strength,
        num_samples=args.num_samples,
        seq_length=args.seq_length,
        seed=args.seed,
        scale_input=args.scale_input,
        scale_output=args.scale_output,
        dampening_frac=args.dampening_frac,
    )
    from llmbuild.quantize import run

    scheme = spec.spec
    smoothing = (
        f"scales from {spec.scale_input}"
        if spec.scale_input
        else f"scales computed (alpha {spec.smoothing_strength})"
        if spec.computes_scales
        else "no smoothing"
    )
    _log(f"{scheme.name} ({scheme.description}) of {spec.model} -> {spec.output}; {smoothing}")
    # the calibration file is an input only when this scheme reads it
    calib = spec.calib if spec.needs_calibration else None
    record = _recorder(args, command, [spec.model, calib, spec.scale_input], started)
    res = run.run(spec, record=record)
    wall = time.time() - started
    rate = f", {res.tokens / wall:.0f} calibration tokens/s overall" if res.tokens else ""
    _log(
        f"done in {wall:.1f}s: {res.samples} samples, {res.tokens} tokens{rate}; "
        f"{res.smoothed_layers} smoothed layers (scales {res.scales_from}); "
        f"modifiers {', '.join(res.modifiers)}; weights {res.weights_bytes} bytes"
    )
    _log(f"wrote {spec.output}" + (f" and {spec.scale_output}" if spec.scale_output else ""))
    return 0


def _run(args: argparse.Namespace) -> int:
    return _quantize(args, "llmbuild quantize run", args.smoothing_strength)


def _smoothquant(args: argparse.Namespace) -> int:
    # with --scale-input, the strength is checked against the file's
    return _quantize(args, "llmbuild quantize smoothquant", args.smoothing_strength)
