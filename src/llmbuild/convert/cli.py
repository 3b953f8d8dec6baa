"""`llmbuild convert hf2mg|mg2hf|lora2hf`: HF safetensors <-> megatron-core checkpoints."""

from __future__ import annotations

import argparse
import os
import sys
import time

DTYPES = ("float32", "bfloat16", "float16")


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("hf2mg", help="HF safetensors -> megatron-core torch_dist checkpoint")
    p.add_argument("--hf", required=True, help="Hugging Face model directory")
    p.add_argument("--output", required=True, help="megatron checkpoint directory to write")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="dtype stored and recorded for training (CPU training needs float32; "
        "bfloat16 keeps a bf16 source as it is)",
    )
    p.add_argument(
        "--pp-layers",
        type=_layers,
        default=None,
        help="uneven pipeline split: layers per stage, e.g. 5,7 (default: pp equal stages)",
    )
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    p.set_defaults(func=_hf2mg)

    p = verbs.add_parser("mg2hf", help="megatron-core checkpoint -> complete HF directory")
    p.add_argument("--load", required=True, help="megatron checkpoint directory")
    p.add_argument(
        "--hf-source",
        required=True,
        help="HF directory to copy tokenizer and generation files from",
    )
    p.add_argument("--output", required=True, help="HF directory to write")
    p.add_argument(
        "--dtype",
        default=None,
        choices=DTYPES,
        help="dtype of the written weights (default: the original HF dtype)",
    )
    p.add_argument(
        "--max-shard-size",
        type=_size,
        default="5GB",
        help="largest safetensors shard (e.g. 5GB, 500MB); bigger models get shards + index",
    )
    p.add_argument(
        "--verify",
        default="weights",
        choices=("weights", "meta", "none"),
        help="before publishing, load the result in transformers: with its weights (default), "
        "on the meta device (names and shapes only; no second copy of the model in memory), "
        "or not at all",
    )
    p.add_argument("--skip-load-check", action="store_true", help="same as --verify none")
    p.set_defaults(func=_mg2hf)

    from llmbuild.convert import lora_cli

    lora_cli.register(verbs)


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of layer counts: {text!r}") from None


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
        # disk into the page cache) while this thread imports torch.
        digests.inputs([args.hf])
        from llmbuild.convert import checkpointer as C

        # Every check (config, architecture, TP/PP, shards, shapes) runs before the output
        # exists.
        C.open_hf(
            args.hf,
            tp=args.tp,
            pp=args.pp,
            make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
            pp_layers=args.pp_layers,
        ).weights.close()
        with atomic_dir(args.output) as tmp:
            stats = C.hf_to_megatron(
                args.hf,
                tmp,
                tp=args.tp,
                pp=args.pp,
                dtype=args.dtype,
                make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                pp_layers=args.pp_layers,
                progress=Progress("hf2mg"),
                written=digests.written,
            )
            provenance.write(
                tmp,
                command="llmbuild convert hf2mg",
                args=vars(args),
                inputs=[args.hf],
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
    from llmbuild.convert.verify_worker import VerifyWorker

    started = time.time()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    verify = "none" if args.skip_load_check else args.verify
    with contextlib.ExitStack() as stack:
        # The transformers check's imports run in a second process while this one converts,
        # and the checkpoint is hashed (and so read ahead) by a thread.
        worker = stack.enter_context(VerifyWorker()) if verify != "none" else None
        if worker is not None:
            # The worker's imports (seconds of CPU) are the critical path; converting is
            # mostly the kernel moving pages. Yield the CPU to the worker: this process
            # lowers its own priority (it ends with the command; the worker keeps its own).
            with contextlib.suppress(OSError):
                os.nice(10)
        digests = stack.enter_context(provenance.Digester())
        digests.inputs([args.load])
        from llmbuild.convert import checkpointer as C
        from llmbuild.mcore import device as D

        D.quiet_warnings()
        C.check_tokenizer_source(Path(args.hf_source))
        source = C.open_megatron(args.load)  # every check runs before the output exists
        with atomic_dir(args.output) as tmp:
            info = C.megatron_to_hf(
                args.load,
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
                worker.check(tmp, weights=verify == "weights")
            info["verified"] = verify
            # after converting: waiting for the worker's imports, then its load check
            info["verify_seconds"] = round(time.time() - waited, 3)
            # the source's weights are not read: only the files copied from it are inputs
            inputs = [args.load, *(Path(args.hf_source) / f for f in info["copied"])]
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
        f"{', '.join(info['copied'])}, transformers check: {verify} -> {args.output} in "
        f"{time.time() - started:.1f}s",
        file=sys.stderr,
    )
    return 0
