"""`llmbuild train lora`: train a LoRA adapter on a frozen megatron checkpoint.

    llmbuild train lora --input MCORE --data SFT_SHARDS --output ADAPTER --train-log LOG
        [--rank 8 --alpha 16 --dropout 0 --target-modules linear_qkv,linear_proj,...] [knobs]

The same flags in one process and under torchrun (one process per tensor/pipeline rank).
Every knob a config key sets (train.lora.*, train.device/tp/pp/pp_layers) defaults to the
schema's value. The output is a Megatron LoRA adapter directory (see train/lora.py) that
`llmbuild convert lora2hf` turns into a PEFT adapter.
"""

from __future__ import annotations

import argparse
import sys
import time

from llmbuild.cliargs import int_list
from llmbuild.schema import default, describe, node


def _str_list(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(","))
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return parts


def register(verbs: argparse._SubParsersAction) -> None:
    def knob(name: str, kind: type, help_text: str | None = None) -> None:
        key = f"train.lora.{name}"
        flag = "--train-iters" if name == "iters" else "--" + name.replace("_", "-")
        p.add_argument(flag, type=kind, default=default(key), help=help_text or describe(key))

    p = verbs.add_parser(
        "lora",
        help="train a LoRA adapter on a frozen megatron checkpoint (base weights untouched)",
    )
    p.add_argument("--input", required=True, help="megatron checkpoint to adapt (frozen)")
    p.add_argument("--data", required=True, help="tokenized SFT shard directory (meta.json)")
    p.add_argument("--output", required=True, help="Megatron LoRA adapter directory to write")
    p.add_argument("--train-log", required=True, help="JSONL training log to write")
    knob("rank", int)
    knob("alpha", float)
    knob("dropout", float)
    p.add_argument(
        "--target-modules",
        type=_str_list,
        default=tuple(default("train.lora.target_modules")),
        help="comma-separated: " + describe("train.lora.target_modules"),
    )
    knob("iters", int, "train.lora.iters")
    knob("lr", float)
    knob("min_lr", float)
    knob("warmup_iters", int)
    knob("micro_batch_size", int)
    knob("global_batch_size", int)
    knob("seq_length", int)
    knob("weight_decay", float)
    knob("seed", int)
    p.add_argument(
        "--device", default=default("train.device"), choices=node("train.device")["enum"]
    )
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    p.add_argument(
        "--pp-layers",
        type=int_list,
        default=default("train.pp_layers"),
        help="layers per pipeline stage, e.g. 1,3: " + describe("train.pp_layers"),
    )
    p.add_argument("--clip-grad", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--log-interval", type=int, default=10, help="a human progress line every N steps"
    )
    p.set_defaults(func=_run)


LORA_FIELDS = ("rank", "alpha", "dropout", "target_modules")


def _run(args: argparse.Namespace) -> int:
    import os

    from llmbuild.mcore.device import quiet_warnings
    from llmbuild.train.lora import LoraArgs, run_lora
    from llmbuild.train.resume import TrainArgs

    started = time.time()
    quiet_warnings()
    fields = {k: v for k, v in vars(args).items() if k not in ("func", "group", "verb")}
    lo = LoraArgs(**{k: fields[k] for k in LORA_FIELDS})
    targs = TrainArgs(mode="sft", **{k: v for k, v in fields.items() if k not in LORA_FIELDS})
    rank = int(os.environ.get("RANK", "0"))

    def say(line: str) -> None:
        if rank == 0:
            print(f"train lora: {line}", file=sys.stderr, flush=True)

    res = run_lora(targs, lo, say=say, started=started, provenance_args=fields)
    say(
        f"done: {res.steps} steps, loss "
        f"{res.first_loss if res.first_loss is not None else float('nan'):.4f} -> "
        f"{res.final_loss:.4f}, {res.tokens:,} tokens, {res.seconds_per_step:.3f} s/step "
        f"-> {args.output}"
    )
    return 0
