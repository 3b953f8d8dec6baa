"""`llmbuild convert hf2mg|mg2hf|lora2hf`: HF safetensors <-> megatron-core checkpoints.

    hf2mg   --input HF --output MCORE [--tp N] [--pp N] [--pp-layers a,b,..] [--dtype D]
            [--backend numpy|torch]
    mg2hf   --input MCORE --hf-source HF --output HF [--dtype D] [--verify weights|meta|none]
    lora2hf --input LORA --base HF --output DIR [--merge]

The old input flags (``--hf``, ``--load``, ``--lora``) are still read, for rules and tests
written before the house conventions; they go away once those say ``--input``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from llmbuild.cliargs import positive_int_list
from llmbuild.convert.formats import BACKENDS
from llmbuild.dtypes import DTYPES
from llmbuild.schema import default


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("hf2mg", help="HF safetensors -> megatron-core torch_dist checkpoint")
    _input(p, "HF", "Hugging Face model directory")
    p.add_argument(
        "--output", metavar="MCORE", required=True, help="megatron checkpoint directory to write"
    )
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    p.add_argument(
        "--pp-layers",
        type=positive_int_list,
        default=default("train.pp_layers"),
        help="uneven pipeline split: layers per stage, e.g. 5,7 (default: pp equal stages)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="dtype stored and recorded for training (CPU training needs float32; "
        "bfloat16 keeps a bf16 source as it is)",
    )
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    p.add_argument(
        "--backend",
        default=BACKENDS[0],
        choices=BACKENDS,
        help="who writes the torch_dist records and metadata: numpy (no torch import; the "
        "default) or torch (torch.save and torch.distributed.checkpoint's classes)",
    )
    p.set_defaults(func=_hf2mg)

    p = verbs.add_parser("mg2hf", help="megatron-core checkpoint -> complete HF directory")
    _input(p, "MCORE", "megatron checkpoint directory")
    p.add_argument(
        "--hf-source",
        required=True,
        help="HF directory to copy tokenizer and generation files from",
    )
    p.add_argument("--output", metavar="HF", required=True, help="HF directory to write")
    p.add_argument(
        "--dtype",
        default=None,
        choices=DTYPES,
        help="dtype of the written weights (default: the original HF dtype)",
    )
    _max_shard_size(p)
    p.add_argument(
        "--verify",
        default="weights",
        choices=("weights", "meta", "none"),
        help="before publishing, load the result in transformers: with its weights (default), "
        "on the meta device (names and shapes only; no second copy of the model in memory), "
        "or not at all",
    )
    p.set_defaults(func=_mg2hf)

    p = verbs.add_parser(
        "lora2hf",
        help="Megatron LoRA adapter -> HF PEFT adapter directory (or, with --merge, a full model)",
    )
    _input(p, "LORA", "Megatron LoRA adapter directory (see convert/lora.py)")
    p.add_argument("--base", required=True, help="HF directory of the base model it adapts")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write the base model with the adapter merged in (a complete HF model directory)",
    )
    p.add_argument(
        "--base-name",
        default=None,
        help="base_model_name_or_path recorded in adapter_config.json (default: --base)",
    )
    _max_shard_size(p)
    p.add_argument(
        "--verify",
        default="weights",
        choices=("weights", "none"),
        help="before publishing, load the result (PEFT on the base, or the merged model) "
        "with transformers",
    )
    p.set_defaults(func=_lora2hf)


def _input(p: argparse.ArgumentParser, metavar: str, what: str) -> None:
    p.add_argument("--input", metavar=metavar, required=True, help=what)


def _max_shard_size(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-shard-size",
        type=_size,
        default="5GB",
        help="largest safetensors shard (e.g. 5GB, 500MB); bigger models get shards + index",
    )


def _size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    for u, mult in sorted(units.items(), key=lambda x: -len(x[0])):
        if t.endswith(u):
            try:
                return int(float(t[: -len(u)]) * mult)
            except ValueError:
                break
    try:
        return int(t.removesuffix("B"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 5GB, 500MB)") from None


class Progress:
    """A log line with rate and ETA at most every ``every`` seconds (for the rule's log)."""

    def __init__(self, verb: str, every: float = 5.0) -> None:
        self.verb, self.every, self.start, self.last = verb, every, time.time(), time.time()

    def __call__(self, done: int, total: int) -> None:
        now = time.time()
        if now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        print(
            f"{self.verb}: {done / 1e6:,.0f}/{total / 1e6:,.0f} MB ({rate / 1e6:,.0f} MB/s, "
            f"ETA {eta:.0f}s)",
            file=sys.stderr,
            flush=True,
        )


def _hf2mg(args: argparse.Namespace) -> int:
    from llmbuild import provenance
    from llmbuild.atomic import atomic_dir

    started = time.time()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # launched under torchrun: conversion is one process, rank 0 does it
    with provenance.Digester() as digests:
        # Hashing the source starts first: it reads the files ahead of the conversion (from
        # disk into the page cache) while this thread imports the converter.
        digests.inputs([args.input])
        from llmbuild.convert import hf2mg

        # Every check (config, architecture, TP/PP, shards, shapes) runs before the output
        # exists.
        hf2mg.open_hf(
            args.input,
            tp=args.tp,
            pp=args.pp,
            make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
            pp_layers=args.pp_layers,
        ).weights.close()
        with atomic_dir(args.output) as tmp:
            stats = hf2mg.hf_to_megatron(
                args.input,
                tmp,
                tp=args.tp,
                pp=args.pp,
                dtype=args.dtype,
                make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                pp_layers=args.pp_layers,
                backend=args.backend,
                progress=Progress("hf2mg"),
                written=digests.written,
            )
            provenance.write(
                tmp,
                command="llmbuild convert hf2mg",
                args=vars(args),
                inputs=[args.input],
                started=started,
                extra={"conversion": stats.__dict__},
                input_digests=digests.input_digests(),
                known=digests.output_digests(tmp),
            )
    print(
        f"hf2mg: {stats.architecture}, {stats.tensors} tensors, {stats.parameters:,} "
        f"parameters ({stats.dtype}, vocab padded to {stats.padded_vocab_size}), tp={args.tp} "
        f"pp={args.pp} -> {args.output} in {time.time() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


def _mg2hf(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    from llmbuild import provenance
    from llmbuild.atomic import atomic_dir
    from llmbuild.convert.verify import VerifyWorker

    started = time.time()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    with contextlib.ExitStack() as stack:
        # The transformers check's imports run in a second process while this one converts,
        # and the checkpoint is hashed (and so read ahead) by a thread.
        worker = stack.enter_context(VerifyWorker()) if args.verify != "none" else None
        if worker is not None:
            # The worker's imports (seconds of CPU) are the critical path; converting is
            # mostly the kernel moving pages. Yield the CPU to the worker: this process
            # lowers its own priority (it ends with the command; the worker keeps its own).
            with contextlib.suppress(OSError):
                os.nice(10)
        digests = stack.enter_context(provenance.Digester())
        digests.inputs([args.input])
        from llmbuild import hfdir
        from llmbuild.convert import mg2hf
        from llmbuild.mcore.device import quiet_warnings

        quiet_warnings()
        hfdir.check_tokenizer(args.hf_source, field="--hf-source")
        source = mg2hf.open_megatron(args.input)  # every check runs before the output exists
        with atomic_dir(args.output) as tmp:
            info = mg2hf.megatron_to_hf(
                args.input,
                args.hf_source,
                tmp,
                dtype=args.dtype,
                max_shard_bytes=args.max_shard_size,
                progress=Progress("mg2hf"),
                source=source,
                written=digests.written,
            )
            waited = time.time()
            if worker is not None:
                worker.check(tmp, weights=args.verify == "weights")
            info["verified"] = args.verify
            # after converting: waiting for the worker's imports, then its load check
            info["verify_seconds"] = round(time.time() - waited, 3)
            # the source's weights are not read: only the files copied from it are inputs
            inputs = [args.input, *(Path(args.hf_source) / f for f in info["copied"])]
            provenance.write(
                tmp,
                command="llmbuild convert mg2hf",
                args=vars(args),
                inputs=inputs,
                started=started,
                extra={"conversion": info},
                input_digests=digests.input_digests(),
                known=digests.output_digests(tmp),
            )
    if not info["chat_template"]:
        print(
            f"mg2hf: warning: {args.hf_source} has no chat template; chat requests to a "
            "server of this model will fail",
            file=sys.stderr,
        )
    print(
        f"mg2hf: {info['architecture']} iteration {info['iteration']}, {info['tensors']} "
        f"tensors ({info['dtype']}, {len(info['weights'])} file(s)), copied "
        f"{', '.join(info['copied'])}, transformers check: {args.verify} -> {args.output} in "
        f"{time.time() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


def _lora2hf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmbuild import hfdir, provenance
    from llmbuild.atomic import atomic_dir
    from llmbuild.convert import lora as L
    from llmbuild.convert.hf2mg import open_hf
    from llmbuild.convert.verify import verify_hf_dir
    from llmbuild.mcore.device import quiet_warnings

    started = time.time()
    quiet_warnings()
    base = open_hf(args.base, tp=1, pp=1)
    lora = L.open_lora(args.input, base.args)  # every check before the output exists
    if args.merge:
        hfdir.check_tokenizer(args.base, field="--base")
    with atomic_dir(args.output) as tmp:
        if args.merge:
            info = L.write_merged(
                lora,
                Path(args.base),
                base.weights,
                base.spec,
                base.args,
                tmp,
                max_shard_bytes=args.max_shard_size,
            )
            if args.verify == "weights":
                verify_hf_dir(tmp)
        else:
            info = L.write_peft(lora, base.args, tmp, args.base_name or str(args.base))
            if args.verify == "weights":
                L.verify_peft_dir(tmp, Path(args.base))
        provenance.write(
            tmp,
            command="llmbuild convert lora2hf",
            args=vars(args),
            inputs=[args.input, Path(args.base) / "config.json"],
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
