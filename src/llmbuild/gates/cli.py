"""`llmbuild gates <verb>`: prove a stage's output, write its verdict JSON, or stop.

Each verb prints one verdict line. A pass (or a warn) writes ``--output`` with its provenance;
a failure writes nothing, prints the verdict JSON to stderr and exits 2 with the verdict line.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmbuild.gates import verdict as V


def _args(args: argparse.Namespace) -> dict[str, object]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def _quant(args: argparse.Namespace) -> int:
    from llmbuild.gates.checks import quant_accuracy

    started = time.time()
    v = quant_accuracy(args.quantized, args.reference, args.max_drop, subject=args.subject)
    V.finish(
        v,
        args.output,
        command="llmbuild gates quantize",
        args=_args(args),
        inputs=[args.quantized, args.reference],
        started=started,
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from llmbuild.gates.checks import train_loss

    started = time.time()
    v = train_loss(args.log, args.iters, subject=args.subject)
    V.finish(
        v,
        args.output,
        command="llmbuild gates train",
        args=_args(args),
        inputs=[args.log],
        started=started,
    )
    return 0


def _summary(args: argparse.Namespace) -> int:
    from llmbuild.gates.report import write_summary

    started = time.time()
    write_summary(args.verdict, args.output, args.html, started=started, args=_args(args))
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    from llmbuild.gates import parity

    parity.register(verbs)

    q = verbs.add_parser(
        "quantize", help="a quantized variant's accuracy within max-drop of its source model's"
    )
    q.add_argument("--quantized", required=True, help="accuracy.json of the quantized variant")
    q.add_argument("--reference", required=True, help="accuracy.json of the model it came from")
    q.add_argument("--max-drop", type=float, default=0.05, help="allowed accuracy drop (0.05)")
    q.add_argument("--subject", default=None, help="name in the verdict (default: the variant)")
    q.add_argument("--output", required=True, help="verdict JSON")
    q.set_defaults(func=_quant)

    t = verbs.add_parser("train", help="every training step logged once with a finite loss")
    t.add_argument("--log", required=True, help="train_log.jsonl")
    t.add_argument("--iters", type=int, default=None, help="the step the log must end at")
    t.add_argument("--subject", default=None)
    t.add_argument("--output", required=True, help="verdict JSON")
    t.set_defaults(func=_train)

    s = verbs.add_parser("summary", help="every gate's verdict in one JSON and one HTML table")
    s.add_argument("--verdict", nargs="+", required=True, help="verdict JSON files")
    s.add_argument("--output", required=True, help="summary JSON")
    s.add_argument("--html", required=True, help="HTML table (for the report)")
    s.set_defaults(func=_summary)
