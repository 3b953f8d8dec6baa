from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/mock_openai.py lives one level up (tests/ has no __init__.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture
def eval_cli():
    """``llmbuild eval ...`` through this group's parser with the top-level error handling."""
    import argparse

    from llmbuild.errors import UserError
    from llmbuild.eval import cli

    def run(argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="llmbuild eval")
        cli.register(parser.add_subparsers(dest="verb", required=True))
        args = parser.parse_args(argv)
        try:
            return int(args.func(args) or 0)
        except UserError as exc:
            print(f"llmbuild eval {args.verb}: error: {exc}", file=sys.stderr)
            return 2

    return run
