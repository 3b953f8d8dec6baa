"""`llmbuild train run`: pretrain, SFT or DPO a megatron checkpoint on tokenized shards.

    llmbuild train run --mode pretrain|sft|dpo --input MCORE --data SHARDS --output MCORE
        --train-log LOG [knobs]

The same flags in one process and under torchrun (one process per rank: tp * pp * dp).
Every knob a config key sets (train.<phase>.*, train.device/tp/pp/dp/pp_layers/save_interval)
defaults to the schema's value; pretrain and SFT share their defaults ($defs/phase).
"""

from __future__ import annotations

import argparse
import sys
import time

from llmbuild.cliargs import int_list
from llmbuild.schema import default, describe, node
from llmbuild.train import lora_cli


def _phase(key: str) -> object:
    """The default of a phase knob: train.pretrain and train.sft share $defs/phase."""
    return default(f"train.pretrain.{key}")


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "run", help="pretrain / SFT / DPO on megatron-core (resumes <output>.partial)"
    )
    p.add_argument("--mode", required=True, choices=("pretrain", "sft", "dpo"))
    p.add_argument("--input", required=True, help="megatron checkpoint to start from")
    p.add_argument("--data", required=True, help="tokenized shard directory (meta.json)")
    p.add_argument("--output", required=True, help="megatron checkpoint directory to write")
    p.add_argument("--train-log", required=True, help="JSONL training log to write")
    p.add_argument("--train-iters", type=int, default=_phase("iters"), help="train.<phase>.iters")
    p.add_argument("--lr", type=float, default=_phase("lr"))
    p.add_argument("--min-lr", type=float, default=_phase("min_lr"))
    p.add_argument("--warmup-iters", type=int, default=_phase("warmup_iters"))
    p.add_argument(
        "--micro-batch-size",
        type=int,
        default=_phase("micro_batch_size"),
        help="default: the global batch (one micro-batch per step)",
    )
    p.add_argument("--global-batch-size", type=int, default=_phase("global_batch_size"))
    p.add_argument("--seq-length", type=int, default=_phase("seq_length"))
    p.add_argument("--weight-decay", type=float, default=_phase("weight_decay"))
    p.add_argument("--seed", type=int, default=_phase("seed"))
    p.add_argument(
        "--device", default=default("train.device"), choices=node("train.device")["enum"]
    )
    p.add_argument(
        "--save-interval",
        type=int,
        default=default("train.save_interval"),
        help=describe("train.save_interval"),
    )
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    p.add_argument("--dp", type=int, default=default("train.dp"), help=describe("train.dp"))
    p.add_argument(
        "--pp-layers",
        type=int_list,
        default=default("train.pp_layers"),
        help="layers per pipeline stage, e.g. 1,3: " + describe("train.pp_layers"),
    )
    p.add_argument(
        "--beta", type=float, default=default("train.dpo.beta"), help=describe("train.dpo.beta")
    )
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--adam-beta1", type=float, default=0.9)
    p.add_argument("--adam-beta2", type=float, default=0.95)
    p.add_argument("--adam-eps", type=float, default=1e-8)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--log-interval", type=int, default=10, help="a human progress line every N steps"
    )
    p.set_defaults(func=_run)
    lora_cli.register(verbs)  # `train lora` (train/lora_cli.py)


def _run(args: argparse.Namespace) -> int:
    from llmbuild.mcore.device import quiet_warnings
    from llmbuild.train.loop import TrainArgs, run

    started = time.time()
    quiet_warnings()
    fields = {k: v for k, v in vars(args).items() if k not in ("func", "group", "verb")}
    if fields["micro_batch_size"] is None:
        fields["micro_batch_size"] = fields["global_batch_size"]
    targs = TrainArgs(**fields)

    def say(line: str) -> None:
        if _rank() == 0:
            print(f"train: {line}", file=sys.stderr, flush=True)

    res = run(targs, say=say, started=started, provenance_args=fields)
    say(
        f"done: {res.steps} steps (resumed at {res.resumed_from}), loss "
        f"{res.first_loss if res.first_loss is not None else float('nan'):.4f} -> "
        f"{res.final_loss:.4f}, {res.tokens:,} tokens, {res.seconds_per_step:.3f} s/step "
        f"-> {args.output}"
    )
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))
