"""The wiring contract, shared by every stage's wiring module.

A config value reaches its step as a flag of the step's `llmbuild` command, named after the key
(`max_num_seqs` -> `--max-num-seqs`) and emitted explicitly whatever its value: booleans as
`--x` / `--no-x`, lists comma-joined, null left out (the command's own default then applies,
which is the schema's "unset"). `tests/workflow/test_config_reaches.py` parses every emitted
command with llmbuild's own parser and checks that each key reaches exactly its steps.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from llmbuild import plan
from llmbuild.sources import stamp


def csv_list(values: Iterable[Any]) -> str:
    return ",".join(str(v) for v in values)


def cli_flags(
    section: Mapping[str, Any], keys: Iterable[str], rename: Mapping[str, str] | None = None
) -> str:
    """`--key value` flags of ``section`` (a config mapping) for ``keys``."""
    rename = rename or {}
    flags = []
    for key in keys:
        value = section[key]
        if value is None:
            continue
        flag = "--" + rename.get(key, key).replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            flags.append(f"{flag} {csv_list(value)}")
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(flags)


def join(*parts: str) -> str:
    """Flag groups joined by one space, empty ones left out."""
    return " ".join(p for p in parts if p)


class Base:
    """The config, the served variants, and where each stack's `llmbuild` is."""

    def __init__(self, config: Mapping[str, Any], src_dir: str = "src"):
        self.config = config
        self.src_dir = src_dir
        self.model = config["model"]["name"]
        self.served = plan.served_variants(dict(config))
        self.benched = plan.bench_variants(dict(config))
        train = config["train"]
        # tp/pp are filled from the catalog at planning (plan.fill_layout); unset: 1
        self.train_ranks = (train["tp"] or 1) * (train["pp"] or 1) * train["dp"]

    def sources(self, group: str) -> list[str]:
        """What stands for llmbuild's source files that ``llmbuild <group>`` runs among the
        inputs of its rules: the group's stamp (sources.stamp), rewritten when one changes."""
        return [stamp(group)]

    def env_marker(self, stack: str) -> list[str] | str:
        """The graph node a rule depends on for its environment (none in external mode)."""
        if self.config["envs"]["mode"] == "external":
            return []
        return f".envs/{stack}/ready.json"

    def llmbuild(self, stack: str) -> str:
        """The llmbuild command inside a stack's environment."""
        if self.config["envs"]["mode"] == "external":
            return "llmbuild"
        return f".envs/{stack}/bin/llmbuild"

    def serve_stack(self) -> str:
        return self.config["serve"]["stack"]
