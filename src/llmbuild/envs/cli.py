"""`llmbuild envs create`: a stack's venv from its pinned spec, marked ready for the graph."""

from __future__ import annotations

import argparse
import time


def _create(args: argparse.Namespace) -> int:
    from llmbuild.envs.venv import create

    started = time.time()
    rec = create(args.spec, args.prefix, args.marker, args.python, args.project)
    print(
        f"{rec['stack']}: {len(rec['packages'])} packages in {rec['prefix']} "
        f"({time.time() - started:.0f}s)"
    )
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("create", help="create/converge .envs/<stack> from envs/<stack>.txt")
    p.add_argument("--spec", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--marker", required=True)
    p.add_argument("--python", default="python3")
    p.add_argument("--project", default=".")
    p.set_defaults(func=_create)
