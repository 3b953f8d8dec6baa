from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/mock_openai.py lives one level up (tests/ has no __init__.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_tokenizer import train_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer().save(str(d / "tokenizer.json"))
    return d


def run_group_cli(group: str, module: str, argv: list[str]) -> int:
    """``llmbuild <group> ...`` through one group's parser, with the top-level CLI's error
    handling (one line, exit 2), so a test does not depend on every other group importing."""
    import argparse
    import importlib

    from llmbuild.errors import UserError

    parser = argparse.ArgumentParser(prog=f"llmbuild {group}")
    verbs = parser.add_subparsers(dest="verb", required=True)
    importlib.import_module(module).register(verbs)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"llmbuild {group} {args.verb}: error: {exc}", file=sys.stderr)
        return 2


@pytest.fixture
def bench_cli():
    return lambda argv: run_group_cli("bench", "llmbuild.bench.cli", argv)
