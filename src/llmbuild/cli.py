"""`llmbuild <group> <verb>`: the one command every rule calls and a user can run by hand.

Each group lives in its own module exposing ``register(subparsers)``; those modules import
only argparse-level things, and load torch, megatron, vLLM and the rest inside the handlers,
so `llmbuild --help` is instant and each environment needs only its own stack.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from llmbuild.errors import UserError

GROUPS: dict[str, tuple[str, str]] = {
    "data": ("llmbuild.data.cli", "make and tokenize datasets"),
    "model": ("llmbuild.model.cli", "make models (the tiny default)"),
    "convert": ("llmbuild.convert.cli", "Hugging Face <-> Megatron-core checkpoints"),
    "train": ("llmbuild.train.cli", "pretrain / SFT on megatron-core"),
    "quantize": ("llmbuild.quantize.cli", "quantize with llm-compressor"),
    "serve": ("llmbuild.serve.cli", "run an OpenAI-compatible vLLM service"),
    "mindie": ("llmbuild.serve.mindie_cli", "MindIE Service's config.json (Ascend serving)"),
    "eval": ("llmbuild.eval.cli", "task accuracy through a service"),
    "bench": ("llmbuild.bench.cli", "benchmark a service"),
    "plot": ("llmbuild.plot.cli", "plots and report pieces"),
    "gates": ("llmbuild.gates.cli", "prove a stage's output (parity, accuracy, loss) or stop"),
    "envs": ("llmbuild.envs.cli", "per-stage environments"),
    "catalog": ("llmbuild.catalog_cli", "the model catalog: recommendations and support"),
    "cluster": ("llmbuild.cluster.cli", "clusters: device checks, Volcano manifests"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` group's module is imported (all when None)."""
    parser = argparse.ArgumentParser(
        prog="llmbuild",
        description=__doc__.splitlines()[0],
        epilog="Whole-build commands: `llmbuild audit [TARGET...]` (records, bytes, drift, gates, "
        "lineage, --rebuild) and `llmbuild why TARGET` (the field that makes it rerun).",
    )
    groups = parser.add_subparsers(dest="group", metavar="<group>", required=True)
    for name, (module, help_text) in GROUPS.items():
        gp = groups.add_parser(name, help=help_text)
        if selected is None or selected == name:
            verbs = gp.add_subparsers(dest="verb", metavar="<verb>", required=True)
            importlib.import_module(module).register(verbs)
    return parser


# whole-build commands, not a stage's verbs: `llmbuild audit [TARGET...]`, `llmbuild why TARGET`
COMMANDS = {"audit", "why"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        # by name, like the groups: a stage's rules do not depend on the audit's source
        return importlib.import_module("llmbuild.audit.cli").main(argv[0], argv[1:])
    parser = build_parser(argv[0] if argv and argv[0] in GROUPS else "")
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as exc:
        # one write(2) call: ranks under torchrun share stderr, and print() writes the text and
        # the newline separately, so two ranks' lines could run together
        line = f"llmbuild {args.group} {args.verb}: error: {exc}\n"
        if sys.stderr is sys.__stderr__:
            sys.stderr.flush()
            os.write(2, line.encode())
        else:  # stderr replaced (captured by a caller): write to what the caller gave
            sys.stderr.write(line)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
