"""`llmbuild convert lora2hf`: a Megatron LoRA adapter -> HF PEFT adapter (or merged model)."""

from __future__ import annotations

import argparse
import sys
import time


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "lora2hf",
        help="Megatron LoRA adapter -> HF PEFT adapter directory (or, with --merge, a full model)",
    )
    p.add_argument(
        "--lora", required=True, help="Megatron LoRA adapter directory (see convert/lora.py)"
    )
    p.add_argument("--base", required=True, help="HF directory of the base model it adapts")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument(
        "--merge",
        action="store_true",
        help="write the base model with the adapter merged in (a complete HF model directory)",
    )
    p.add_argument(
        "--base-name",
        default=None,
        help="base_model_name_or_path recorded in adapter_config.json (default: --base)",
    )
    p.add_argument("--max-shard-size", default="5GB", help="merged model: largest shard")
    p.add_argument(
        "--verify",
        default="weights",
        choices=("weights", "none"),
        help="before publishing, load the result (PEFT on the base, or the merged model) "
        "with transformers",
    )
    p.set_defaults(func=_lora2hf)


def _lora2hf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmbuild import provenance
    from llmbuild.atomic import atomic_dir
    from llmbuild.convert import checkpointer as C
    from llmbuild.convert import lora as L
    from llmbuild.convert.cli import _size
    from llmbuild.mcore.device import quiet_warnings

    started = time.time()
    quiet_warnings()
    base = C.open_hf(args.base, tp=1, pp=1)
    lora = L.open_lora(args.lora, base.args)  # every check before the output exists
    if args.merge:
        C.check_tokenizer_source(Path(args.base))
    with atomic_dir(args.output) as tmp:
        if args.merge:
            info = L.write_merged(
                lora,
                Path(args.base),
                base.weights,
                base.spec,
                base.args,
                tmp,
                max_shard_bytes=_size(args.max_shard_size),
            )
            if args.verify == "weights":
                C.verify_hf_dir(tmp)
        else:
            info = L.write_peft(lora, base.args, tmp, args.base_name or str(args.base))
            if args.verify == "weights":
                L.verify_peft_dir(tmp, Path(args.base))
        provenance.write(
            tmp,
            command="llmbuild convert lora2hf",
            args=vars(args),
            inputs=[args.lora, Path(args.base) / "config.json"],
            started=started,
            extra={"conversion": info},
        )
    base.weights.close()
    what = "merged model" if args.merge else "PEFT adapter"
    print(
        f"lora2hf: {len(lora.pairs)} megatron LoRA pairs (r={lora.config.r}, "
        f"alpha={lora.config.alpha}) -> {what} {args.output} in {time.time() - started:.1f}s",
        file=sys.stderr,
    )
    return 0
