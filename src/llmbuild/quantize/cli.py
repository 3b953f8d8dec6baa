"""`llmbuild quantize <verb>`: SmoothQuant W8A8 and weight-only quantization (llm-compressor).

No heavy import here: torch, transformers and llmcompressor load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llmbuild.quantize.spec import ALGORITHMS, SCHEMES, QuantSpec
from llmbuild.schema import default


def _knob(p: argparse.ArgumentParser, key: str, kind: type, text: str) -> None:
    """A flag a config key sets: named after ``quantize.<key>``, with the schema's default."""
    flag = "--" + key.replace("_", "-")
    p.add_argument(
        flag, type=kind, default=default(f"quantize.{key}"), help=f"{text}; default %(default)s"
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", type=Path, required=True, help="Hugging Face model directory")
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="quantized model directory (compressed-tensors safetensors)",
    )
    p.add_argument(
        "--calib", type=Path, help='calibration JSONL: Alpaca records or {"text": ...} per line'
    )
    _knob(p, "num_samples", int, "calibration samples (seeded)")
    _knob(p, "seq_length", int, "tokens per calibration sample")
    _knob(p, "seed", int, "calibration sampling and torch seed")
    p.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        default="rtn",
        help="weight rounding: rtn (round-to-nearest) or gptq (uses calibration); "
        "default %(default)s",
    )
    p.add_argument("--dampening-frac", type=float, default=0.01, help="GPTQ dampening")


def register(verbs) -> None:
    p = verbs.add_parser(
        "smoothquant",
        help="SmoothQuant smoothing, then int8 (W8A8) or weight-only quantization",
        description="SmoothQuant (per-channel smoothing folded into the weights) followed by "
        "quantization with llm-compressor's oneshot; saved in compressed-tensors format. "
        "W8A8: int8 per-channel weights, int8 per-token dynamic activations.",
    )
    _common(p)
    p.add_argument("--scheme", default="W8A8", help=f"one of {', '.join(SCHEMES)}")
    _knob(p, "smoothing_strength", float, "SmoothQuant alpha in (0, 1)")
    p.add_argument(
        "--scale-output", type=Path, help="write the smoothing scales to this safetensors file"
    )
    p.add_argument(
        "--scale-input",
        type=Path,
        help="reuse smoothing scales from this file instead of computing them",
    )
    p.set_defaults(func=_smoothquant)

    w = verbs.add_parser(
        "weight-only",
        help="weight-only quantization (W8A16, W4A16) without smoothing",
        description="Weight-only quantization with llm-compressor (RTN or GPTQ).",
    )
    _common(w)
    w.add_argument("--scheme", default="W4A16", help="W8A16 or W4A16")
    w.set_defaults(algorithm="gptq")
    w.set_defaults(func=_weight_only)


def _log(msg: str) -> None:
    print(f"[llmbuild quantize] {msg}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, spec: QuantSpec, command: str) -> int:
    started = time.time()
    from llmbuild import provenance
    from llmbuild.quantize import smoothquant

    arg_dict = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"
    }
    inputs = [p for p in (spec.model, spec.calib, spec.scale_input) if p is not None]

    def record(path: Path, extra: dict[str, object]) -> None:
        provenance.write(
            path, command=command, args=arg_dict, inputs=inputs, started=started, extra=extra
        )

    _log(
        f"{spec.scheme} ({spec.algorithm}) of {spec.model} -> {spec.output}; smoothing "
        f"{spec.smoothing_strength if spec.smoothing_strength is not None else 'off'}"
        + (f" from {spec.scale_input}" if spec.scale_input else "")
    )
    res = smoothquant.run(spec, record=record)
    wall = time.time() - started
    rate = f", {res.tokens / wall:.0f} calibration tokens/s overall" if res.tokens else ""
    _log(
        f"done in {wall:.1f}s: {res.samples} samples, {res.tokens} tokens{rate}; "
        f"{res.smoothed_layers} smoothed layers (scales {res.scales_from}); "
        f"modifiers {', '.join(res.modifiers)}"
    )
    _log(f"wrote {spec.output}" + (f" and {spec.scale_output}" if spec.scale_output else ""))
    return 0


def _spec(args: argparse.Namespace, **only: object) -> QuantSpec:
    """The run the flags ask for; ``only`` holds what one verb sets itself."""
    return QuantSpec(
        model=args.input,
        output=args.output,
        scheme=args.scheme,
        calib=args.calib,
        algorithm=args.algorithm,
        num_samples=args.num_samples,
        seq_length=args.seq_length,
        seed=args.seed,
        dampening_frac=args.dampening_frac,
        **only,
    )


def _smoothquant(args: argparse.Namespace) -> int:
    spec = _spec(
        args,
        smoothing_strength=args.smoothing_strength,
        scale_input=args.scale_input,
        scale_output=args.scale_output,
    )
    return _run(args, spec, "llmbuild quantize smoothquant")


def _weight_only(args: argparse.Namespace) -> int:
    from llmbuild.errors import UserError

    spec = _spec(args, smoothing_strength=None)
    if SCHEMES[spec.scheme][1]:
        raise UserError(
            f"{spec.scheme} quantizes activations; use `llmbuild quantize smoothquant`",
            field="--scheme",
        )
    return _run(args, spec, "llmbuild quantize weight-only")
