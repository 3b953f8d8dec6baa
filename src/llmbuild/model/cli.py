"""`llmbuild model tiny`: the embedded default model, made locally."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.atomic import atomic_dir


def _tiny(args: argparse.Namespace) -> int:
    from llmbuild.data.formats import read_pretrain
    from llmbuild.model.tiny import TinySpec, make_model, save_tokenizer, train_tokenizer

    started = time.time()
    spec = TinySpec(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
        max_position_embeddings=args.max_position_embeddings,
        seed=args.seed,
    )
    with atomic_dir(args.output) as tmp:
        tok = train_tokenizer(read_pretrain(args.corpus), spec.vocab_size)
        tok_dir = tmp / ".tokenizer"
        tok_dir.mkdir()
        save_tokenizer(tok, tok_dir, spec.max_position_embeddings)
        info = make_model(spec, tok_dir, tmp)
        for f in tok_dir.iterdir():
            f.unlink()
        tok_dir.rmdir()
        provenance.write(
            tmp,
            command="model tiny",
            args=vars(args),
            inputs=[args.corpus],
            started=started,
            extra={"model": info},
        )
    print(
        f"tiny model with {info['parameters']} parameters and a {tok.get_vocab_size()}-token "
        f"tokenizer in {Path(args.output)}"
    )
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("tiny", help="tokenizer trained on a corpus + random tiny Llama")
    p.add_argument("--corpus", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--intermediate-size", type=int, default=384)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--max-position-embeddings", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tiny)
