"""`llmbuild gates <verb>`: prove a stage's output, write its verdict JSON, or stop.

Each verb prints one verdict line. A pass (or a warn) writes ``--output`` with its provenance;
a failure writes nothing, prints the verdict JSON to stderr and exits 2 with the verdict line.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from llmbuild.gates import verdict as V
from llmbuild.schema import default, describe


def _finish(v: V.Verdict, args: argparse.Namespace, verb: str, inputs: list, started: float) -> int:
    """Print the verdict; write it (pass/warn/skipped) or raise its line (fail)."""
    V.finish(
        v,
        args.output,
        command=f"llmbuild gates {verb}",
        args=_args(args),
        inputs=inputs,
        started=started,
    )
    return 0


def _args(args: argparse.Namespace) -> dict[str, object]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def _parity(args: argparse.Namespace) -> int:
    from llmbuild.gates.parity import gate
    from llmbuild.mcore.device import quiet_warnings

    started = time.time()
    quiet_warnings()
    v = gate(
        args.hf,
        args.mcore,
        args.direction,
        mode=args.mode,
        tolerance=args.tolerance,
        compute_dtype=args.compute_dtype,
        num_sequences=args.num_sequences,
        seq_length=args.seq_length,
        seed=args.seed,
        threads=args.threads,
        subject=args.subject,
        say=lambda line: print(f"parity: {line}", flush=True),
    )
    return _finish(v, args, "parity", [args.hf, args.mcore], started)


def _tolerance(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or auto: {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return v


def _register_parity(verbs: argparse._SubParsersAction) -> None:
    from llmbuild.gates.parity import COMPUTE, DIRECTIONS, MODES

    p = verbs.add_parser(
        "parity",
        help="megatron-core's logits on a checkpoint equal the HF model's (within tolerance)",
        description="See llmbuild/gates/parity.py for the tolerances and the memory rule.",
    )
    p.add_argument("--hf", required=True, help="Hugging Face model directory (safetensors)")
    p.add_argument("--mcore", required=True, help="megatron-core torch_dist checkpoint directory")
    p.add_argument(
        "--direction",
        required=True,
        choices=DIRECTIONS,
        help="hf2mg: --hf is the source, --mcore its conversion; mg2hf: --mcore is the "
        "source, --hf its reconversion",
    )
    p.add_argument("--output", required=True, help="verdict JSON")
    p.add_argument(
        "--mode",
        default=default("gates.parity"),
        choices=MODES,
        help="auto: run when the model fits in memory twice, else skip; on; off (gates.parity)",
    )
    p.add_argument(
        "--tolerance",
        type=_tolerance,
        default=default("gates.parity_tolerance"),
        help="max |logit diff| allowed, or auto (null in gates.parity_tolerance): by compute "
        "dtype, float32 1e-5, bfloat16 2^-3, float16 2^-6, each x max(1, max |logit|)",
    )
    p.add_argument(
        "--compute-dtype",
        default="float32",
        choices=COMPUTE,
        help="float32 (default): both models run in fp32 on the same weights; native: in the "
        "weights' dtype (half the memory, a coarser check)",
    )
    p.add_argument("--num-sequences", type=int, default=4)
    p.add_argument("--seq-length", type=int, default=32)
    p.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--subject", default=None, help="name in the verdict (default: from --mcore)")
    p.set_defaults(func=_parity)


def _quant(args: argparse.Namespace) -> int:
    from llmbuild.gates.checks import quant_accuracy

    started = time.time()
    v = quant_accuracy(args.input, args.reference, args.max_drop, subject=args.subject)
    return _finish(v, args, "quantize", [args.input, args.reference], started)


def _train(args: argparse.Namespace) -> int:
    from llmbuild.gates.checks import train_loss

    started = time.time()
    v = train_loss(args.input, args.iters, subject=args.subject)
    return _finish(v, args, "train", [args.input], started)


def _summary(args: argparse.Namespace) -> int:
    from llmbuild.gates.report import write_summary

    started = time.time()
    write_summary(args.input, args.output, args.html, started=started, args=_args(args))
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    _register_parity(verbs)

    q = verbs.add_parser(
        "quantize", help="a quantized variant's accuracy within max-drop of its source model's"
    )
    q.add_argument("--input", required=True, help="accuracy.json of the quantized variant")
    q.add_argument("--reference", required=True, help="accuracy.json of the model it came from")
    q.add_argument(
        "--max-drop",
        type=float,
        default=default("gates.quant_max_drop"),
        help=describe("gates.quant_max_drop") + " (%(default)s)",
    )
    q.add_argument("--subject", default=None, help="name in the verdict (default: the variant)")
    q.add_argument("--output", required=True, help="verdict JSON")
    q.set_defaults(func=_quant)

    t = verbs.add_parser("train", help="every training step logged once with a finite loss")
    t.add_argument("--input", required=True, help="train_log.jsonl")
    t.add_argument("--iters", type=int, default=None, help="the step the log must end at")
    t.add_argument("--subject", default=None)
    t.add_argument("--output", required=True, help="verdict JSON")
    t.set_defaults(func=_train)

    s = verbs.add_parser("summary", help="every gate's verdict in one JSON and one HTML table")
    s.add_argument("--input", nargs="+", required=True, help="verdict JSON files")
    s.add_argument("--output", required=True, help="summary JSON")
    s.add_argument("--html", required=True, help="HTML table (for the report)")
    s.set_defaults(func=_summary)
