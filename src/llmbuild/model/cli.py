"""`llmbuild model tiny`: the embedded default model, made locally."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.atomic import atomic_dir
from llmbuild.schema import default, node

#: the config keys model.tiny.*: each is a flag of its name with the schema's default
TINY_KEYS = tuple(node("model.tiny")["properties"])


def _tiny(args: argparse.Namespace) -> int:
    from llmbuild.data.formats import read_pretrain
    from llmbuild.model.tiny import TinySpec, make_model, save_tokenizer, train_tokenizer

    started = time.time()
    spec = TinySpec(**{key: getattr(args, key) for key in TINY_KEYS})
    with atomic_dir(args.output) as tmp:
        tok = train_tokenizer(read_pretrain(args.input), spec.vocab_size)
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
            inputs=[args.input],
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
    p.add_argument("--input", required=True, help="pretraining corpus the tokenizer learns")
    p.add_argument("--output", required=True, help="HF model directory to write")
    for key in TINY_KEYS:
        p.add_argument("--" + key.replace("_", "-"), type=int, default=default(f"model.tiny.{key}"))
    p.set_defaults(func=_tiny)
