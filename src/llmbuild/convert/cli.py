"""`llmbuild convert hf2mg|mg2hf`: Hugging Face safetensors <-> megatron-core checkpoints."""

from __future__ import annotations

import argparse
import sys
import time


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("hf2mg", help="HF safetensors -> megatron-core torch_dist checkpoint")
    p.add_argument("--hf", required=True, help="Hugging Face model directory")
    p.add_argument("--output", required=True, help="megatron checkpoint directory to write")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "npu"))
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="parameter dtype of the megatron model (CPU training needs float32)",
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
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the written weights (default: the original HF dtype)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "npu"))
    p.add_argument(
        "--skip-load-check",
        action="store_true",
        help="do not reload the result with transformers before publishing it",
    )
    p.set_defaults(func=_mg2hf)


def _hf2mg(args: argparse.Namespace) -> int:
    from llmbuild import provenance
    from llmbuild.convert import checkpointer as C
    from llmbuild.mcore import device as D

    started = time.time()
    D.quiet_warnings()
    D.check_device(args.device)
    C.check_hf_dir(args.hf)  # bad input fails before any process group starts
    try:
        # torch.distributed first: under torchrun, rank 0 owns the temporary directory.
        D.init_backend(args.device, tp=args.tp, pp=args.pp)
        with C.rank0_atomic_dir(args.output) as tmp:
            stats = C.hf_to_megatron(
                args.hf,
                tmp,
                tp=args.tp,
                pp=args.pp,
                device=args.device,
                dtype=args.dtype,
                make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
            )
            rank = _rank()
            if rank == 0:
                provenance.write(
                    tmp,
                    command="llmbuild convert hf2mg",
                    args=vars(args),
                    inputs=[args.hf],
                    started=started,
                    extra={"conversion": stats.__dict__},
                )
    finally:
        D.shutdown()
    if rank == 0:
        print(
            f"hf2mg: {stats.architecture}, {stats.tensors} tensors, {stats.parameters:,} "
            f"parameters (vocab padded to {stats.padded_vocab_size}) -> {args.output} "
            f"in {time.time() - started:.1f}s",
            file=sys.stderr,
        )
    return 0


def _mg2hf(args: argparse.Namespace) -> int:
    from llmbuild import provenance
    from llmbuild.atomic import atomic_dir
    from llmbuild.convert import checkpointer as C
    from llmbuild.mcore import device as D

    started = time.time()
    D.quiet_warnings()
    D.check_device(args.device)
    try:
        desc, tensors = C.megatron_to_hf_tensors(args.load, device=args.device)
    finally:
        D.shutdown()
    with atomic_dir(args.output) as tmp:
        info = C.write_hf_dir(desc, tensors, args.hf_source, tmp, dtype=args.dtype)
        if not args.skip_load_check:
            C.verify_hf_dir(tmp, tensors)
        provenance.write(
            tmp,
            command="llmbuild convert mg2hf",
            args=vars(args),
            inputs=[args.load, args.hf_source],
            started=started,
            extra={"conversion": info},
        )
    if not info["chat_template"]:
        print(
            f"mg2hf: warning: {args.hf_source} has no chat template; chat requests to a "
            "server of this model will fail",
            file=sys.stderr,
        )
    print(
        f"mg2hf: {desc.args.architecture}, {len(tensors)} tensors ({info['dtype']}), "
        f"copied {', '.join(info['copied'])} -> {args.output} in "
        f"{time.time() - started:.1f}s",
        file=sys.stderr,
    )
    return 0


def _rank() -> int:
    import torch

    d = torch.distributed
    return d.get_rank() if d.is_available() and d.is_initialized() else 0
