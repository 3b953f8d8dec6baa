"""`llmbuild data ...`: make the synthetic default inputs and tokenize datasets into shards."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.atomic import atomic_dir, atomic_file
from llmbuild.errors import UserError
from llmbuild.schema import default


def _synth_corpus(args: argparse.Namespace) -> int:
    from llmbuild.data.synth import corpus_documents

    started = time.time()
    if args.num_docs < 1:
        raise UserError("must be >= 1", field="--num-docs")
    out = Path(args.output)
    with atomic_file(out) as fh:
        for doc in corpus_documents(args.num_docs, args.seed):
            fh.write(json.dumps({"text": doc}) + "\n")
    provenance.write(out, command="data synth-corpus", args=vars(args), started=started)
    print(f"wrote {args.num_docs} documents to {out}")
    return 0


def _synth_task(args: argparse.Namespace) -> int:
    from llmbuild.data.synth import TaskSpec, task_split

    started = time.time()
    spec = TaskSpec(
        args.task, args.num_train, args.num_heldout, args.min_len, args.max_len, args.seed
    )
    train, heldout = task_split(spec)
    rows = [ex.as_alpaca() for ex in (heldout if args.split == "heldout" else train)]
    if args.split == "preference":  # DPO: the training examples' answers over a wrong one
        from llmbuild.data.preference import synth_records

        rows = list(synth_records(train))
    out = Path(args.output)
    with atomic_file(out) as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    provenance.write(out, command="data synth-task", args=vars(args), started=started)
    print(f"wrote {len(rows)} {args.split} {args.task} examples to {out}")
    return 0


# Below this much input, text is encoded in this process: worker processes would take longer
# to start than the work takes (the output is the same either way).
SMALL_INPUT = 4 << 20


def _workers(args: argparse.Namespace) -> int:
    """--workers, else the CPUs this process may use; one for a small input."""
    if args.workers is not None and args.workers < 1:
        raise UserError(f"must be >= 1, got {args.workers}", field="--workers")
    workers = args.workers or len(os.sched_getaffinity(0))
    path = Path(args.input)
    if path.is_file() and path.stat().st_size < SMALL_INPUT:
        return 1
    return workers


def _tokenize(args: argparse.Namespace) -> int:
    from llmbuild.data import batched, formats
    from llmbuild.data import tokenize as tk
    from llmbuild.data.specials import load_tokenizer, resolve_special_tokens

    started = time.time()
    workers = _workers(args)
    batched.set_threads(workers)  # before the tokenizer first runs
    if args.seq_length < 8:
        raise UserError("must be >= 8", field="--seq-length")
    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        raise UserError(
            "no tokenizer.json here; point --tokenizer at a HF model directory",
            path=args.tokenizer,
            field="tokenizer",
        )
    tok = load_tokenizer(args.tokenizer)
    specials = resolve_special_tokens(args.tokenizer, args.eod_token, tok=tok)
    what = f"tokenize {args.kind}"
    rate = batched.Rate(lambda line: print(f"{what}: {line}", file=sys.stderr, flush=True))
    tally = formats.Tally()
    with atomic_dir(args.output) as tmp:
        progress = lambda docs, toks: rate.update(docs, toks, tally.fraction)  # noqa: E731
        common = dict(workers=workers, progress=progress, specials=specials, tok=tok)
        if args.kind == "pretrain":
            docs = formats.read_pretrain(args.input, args.text_key, tally)
            stats = tk.tokenize_pretrain(docs, args.tokenizer, tmp, args.seq_length, **common)
        elif args.kind == "dpo":
            from llmbuild.data.preference import read_pairs, tokenize_pairs

            stats = tk.TokenizeStats("dpo")
            tokenize_pairs(
                read_pairs(args.input, tally),
                args.tokenizer,
                tmp,
                args.seq_length,
                args.overlong,
                stats,
                specials,
                tok,
                progress,
            )
        else:
            convs = formats.read_instructions(args.input, args.format, tally)
            stats = tk.tokenize_instructions(
                convs, args.tokenizer, tmp, args.seq_length, args.overlong, **common
            )
        if stats.documents == 0:
            why = "all empty or masked"
            if stats.over_seq_length:
                why = (
                    f"{stats.over_seq_length} of {stats.documents + stats.dropped} are longer "
                    f"than seq_length {args.seq_length} and were dropped; raise the training "
                    "phase's seq_length (train.<phase>.seq_length, or data.seq_length) or set "
                    "data.overlong: truncate"
                )
            raise UserError(f"no usable documents: {why}", path=args.input)
        if stats.engine:
            print(f"{what}: encoded with {stats.engine}", file=sys.stderr, flush=True)
        done = rate.line(stats.documents, stats.tokens, tally.fraction)
        print(f"{what}: {done}", file=sys.stderr, flush=True)
        tk.write_meta(tmp, stats, args.tokenizer, args.seq_length, specials=specials, tok=tok)
        provenance.write(
            tmp,
            command="data tokenize",
            args=vars(args),
            inputs=[args.input, args.tokenizer],
            started=started,
        )
    s = stats.as_dict(args.seq_length)
    print(
        f"{args.kind}: {s['documents']} documents, {s['tokens']} tokens "
        f"({s['trained_tokens']} trained); over seq_length {args.seq_length}: "
        f"{s['over_seq_length']} ({100 * s['over_seq_length_fraction']:.2f}%), dropped "
        f"{s['dropped']}, truncated {s['truncated']}"
    )
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("synth-corpus", help="a synthetic pretraining corpus (JSONL)")
    p.add_argument("--output", required=True)
    p.add_argument("--num-docs", type=int, default=default("data.pretrain.num_docs"))
    p.add_argument("--seed", type=int, default=default("data.pretrain.seed"))
    p.set_defaults(func=_synth_corpus)

    p = verbs.add_parser("synth-task", help="an exact-answer instruction task, train + held-out")
    p.add_argument("--output", required=True, help="JSONL file (Alpaca records)")
    p.add_argument(
        "--split",
        choices=["train", "heldout", "preference"],
        required=True,
        help="preference: the training split as DPO pairs (chosen: the answer, rejected: the "
        "input copied back)",
    )
    for key in ("task", "num_train", "num_heldout", "min_len", "max_len", "seed"):
        value = default(f"data.sft.{key}")
        p.add_argument("--" + key.replace("_", "-"), type=type(value), default=value)
    p.set_defaults(func=_synth_task)

    p = verbs.add_parser("tokenize", help="text or instructions -> Megatron indexed dataset")
    p.add_argument(
        "--kind",
        choices=["pretrain", "sft", "dpo"],
        required=True,
        help="dpo: preference records (instruction, input, chosen, rejected)",
    )
    p.add_argument("--input", required=True)
    p.add_argument("--tokenizer", required=True, help="HF model/tokenizer directory")
    p.add_argument("--output", required=True, help="shard directory")
    p.add_argument(
        "--format", default=default("data.sft.format"), help="sft: alpaca, sharegpt or openai"
    )
    p.add_argument(
        "--text-key",
        default=default("data.pretrain.text_key"),
        help="pretrain: the text field/column",
    )
    p.add_argument(
        "--seq-length",
        type=int,
        required=True,
        help="length the samples are checked against (data.seq_length, else the training "
        "phase's seq_length: no one default)",
    )
    p.add_argument(
        "--overlong", default=default("data.overlong"), help="sft: drop, truncate or error"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=default("data.workers"),
        help="processes that encode; default: the CPUs this process may use; an input "
        "under 4 MB is encoded in this one",
    )
    p.add_argument(
        "--eod-token",
        default=default("data.eod_token"),
        help="the end-of-document token (one token of the vocabulary); "
        "default: the tokenizer's eos_token",
    )
    p.set_defaults(func=_tokenize)
