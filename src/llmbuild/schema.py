"""The config schema (``schema.yaml`` beside this module): the one place every default lives.

The graph validates configs with it (rules/common.smk) and fills in its defaults; every CLI
flag that a config key sets takes its default from here too (``default("quantize.seq_length")``),
so a step run by hand and a step run by the graph agree.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("schema.yaml")


def read_yaml(text: str) -> Any:
    """YAML's safe loader, libyaml's C one where PyYAML has it (planning reads the schema and
    the catalog at every Snakemake start, jobs included)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def load() -> dict[str, Any]:
    return read_yaml(PATH.read_text())


def node(key: str) -> dict[str, Any]:
    """The schema node of a dotted config key (``$ref`` followed)."""
    schema = load()
    cur: dict[str, Any] = schema
    for part in key.split("."):
        if "$ref" in cur:
            cur = schema["$defs"][cur["$ref"].rsplit("/", 1)[1]]
        try:
            cur = cur["properties"][part]
        except KeyError:
            raise KeyError(f"no config key {key!r} in {PATH}") from None
    if "$ref" in cur:
        cur = schema["$defs"][cur["$ref"].rsplit("/", 1)[1]]
    return cur


def default(key: str) -> Any:
    """The schema's default of a dotted config key, e.g. ``default("train.sft.lr")``."""
    n = node(key)
    if "default" not in n:
        raise KeyError(f"config key {key!r} has no default in {PATH}")
    return n["default"]


def describe(key: str) -> str:
    """The key's description (for --help)."""
    return " ".join(str(node(key).get("description", "")).split())
