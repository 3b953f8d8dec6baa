"""`llmbuild catalog ...`: look up the model catalog (config/catalog.yaml)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmbuild.errors import UserError

DEFAULT = Path(__file__).resolve().parents[2] / "config" / "catalog.yaml"


def _show(args: argparse.Namespace) -> int:
    from llmbuild import catalog

    models = catalog.load(args.catalog)
    if args.model not in models:
        raise UserError(
            f"unknown model {args.model!r}; known: {', '.join(sorted(models))}",
            path=args.catalog,
            field="models",
        )
    entry = dict(models[args.model])
    if args.strategy:
        entry["recommended"] = catalog.recommend(models, args.model, args.strategy, args.seq_len)
    print(json.dumps(entry, indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    from llmbuild import catalog

    models = catalog.load(args.catalog)
    if not catalog.supports(models, args.model, args.scheme):
        raise UserError(
            f"model {args.model!r} does not support {args.scheme}",
            path=args.catalog,
            field=f"models.{args.model}.quantization",
        )
    print(f"{args.model}: {args.scheme} supported")
    return 0


def catalog_columns() -> list[str]:
    from llmbuild.catalog import SCHEME_COLUMN

    return list(SCHEME_COLUMN)


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("show", help="a model's entry (and recommended layout)")
    p.add_argument("model")
    p.add_argument("--strategy", choices=["full", "lora"])
    p.add_argument("--seq-len", type=int)
    p.add_argument("--catalog", default=str(DEFAULT))
    p.set_defaults(func=_show)
    p = verbs.add_parser("check", help="exit non-zero unless the model supports the scheme")
    p.add_argument("model")
    p.add_argument("scheme", choices=sorted(catalog_columns()))
    p.add_argument("--catalog", default=str(DEFAULT))
    p.set_defaults(func=_check)
