"""`llmbuild train run`: pretrain or SFT a megatron checkpoint on tokenized shards."""

from __future__ import annotations

import argparse
import sys
import time


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("run", help="pretrain / SFT on megatron-core (resumes <save>.partial)")
    p.add_argument("--mode", required=True, choices=("pretrain", "sft"))
    p.add_argument("--load", required=True, help="megatron checkpoint to start from")
    p.add_argument("--data", required=True, help="tokenized shard directory (meta.json)")
    p.add_argument("--save", required=True, help="megatron checkpoint directory to write")
    p.add_argument(
        "--log",
        "--train-log",
        dest="log",
        required=True,
        help="JSONL training log to write (under torchrun spell it --train-log: "
        "torchrun's own parser takes --log as an abbreviation of its --log-dir)",
    )
    p.add_argument("--train-iters", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--warmup-iters", type=int, default=0)
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--global-batch-size", type=int, default=1)
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "npu"))
    p.add_argument(
        "--save-interval",
        type=int,
        default=0,
        help="checkpoint every K steps into <save>.partial (0: only at the end)",
    )
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    p.add_argument(
        "--pp-layers",
        type=_layers,
        default=None,
        help="uneven pipeline split: layers per stage, e.g. 1,3 (default: pp equal stages)",
    )
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--adam-beta1", type=float, default=0.9)
    p.add_argument("--adam-beta2", type=float, default=0.95)
    p.add_argument("--adam-eps", type=float, default=1e-8)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--log-interval", type=int, default=10, help="a human progress line every N steps"
    )
    p.set_defaults(func=_run)


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of layer counts: {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    from llmbuild.mcore.device import quiet_warnings
    from llmbuild.train.loop import TrainArgs, run

    started = time.time()
    quiet_warnings()
    fields = {k: v for k, v in vars(args).items() if k not in ("func", "group", "verb")}
    targs = TrainArgs(**fields)

    def say(line: str) -> None:
        if _rank() == 0:
            print(f"train: {line}", file=sys.stderr, flush=True)

    res = run(targs, say=say, started=started, provenance_args=fields)
    say(
        f"done: {res.steps} steps (resumed at {res.resumed_from}), loss "
        f"{res.first_loss if res.first_loss is not None else float('nan'):.4f} -> "
        f"{res.final_loss:.4f}, {res.tokens:,} tokens, {res.seconds_per_step:.3f} s/step "
        f"-> {args.save}"
    )
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))
