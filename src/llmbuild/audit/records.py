"""Reading what was recorded: provenance records, environments' package lists, the source tree,
and naming a difference by the config key it comes from."""

from __future__ import annotations

import functools
import json
import re
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from llmbuild import provenance

# Arguments that say where, not what: paths differ between two trees of the same build.
_NOT_PARAMETERS = {"group", "verb", "func"}


def load(artifact: str | Path, root: Path) -> dict | None:
    """The provenance record of ``artifact`` (a path relative to ``root``), or None."""
    path = root / artifact
    if not path.exists():
        return None
    rec_path = provenance.provenance_path(path)
    if not rec_path.is_file():
        return None
    try:
        return json.loads(rec_path.read_text())
    except ValueError:
        return {"_unreadable": str(rec_path)}


def load_any(artifact: str | Path, root: Path) -> dict | None:
    """``load``, or a service's record, which outlives its endpoint file beside it."""
    rec = load(artifact, root)
    if rec is None and not (root / artifact).exists():
        sibling = root / (str(artifact) + "." + provenance.PROVENANCE)
        try:
            return json.loads(sibling.read_text())
        except (OSError, ValueError):
            return None
    return rec


def record_file(artifact: str | Path, root: Path) -> str:
    return str(provenance.provenance_path(root / artifact).relative_to(root))


def args_diff(recorded: dict, now: dict) -> list[tuple[str, Any, Any]]:
    """(argument, recorded value, value the config gives now) for every argument that
    differs, over the arguments both know."""
    out = []
    for key in sorted(recorded.keys() & now.keys()):
        if key in _NOT_PARAMETERS:
            continue
        a, b = recorded[key], now[key]
        if _norm(a) != _norm(b):
            out.append((key, a, b))
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


@functools.cache
def _schema_keys() -> tuple[str, ...]:
    from llmbuild import schema as S

    schema = S.load()

    def walk(node: dict, prefix: str) -> list[str]:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
        if node.get("type") == "object" and "properties" in node:
            out: list[str] = []
            for k, v in node["properties"].items():
                out += walk(v, f"{prefix}{k}.")
            return out
        return [prefix[:-1]]

    return tuple(walk(schema, ""))


# flags named otherwise than their key (the wiring's renames)
_RENAMED = {
    "gate_mode": "gates.mode",
    "mode": "gates.parity",
    "tolerance": "gates.parity_tolerance",
}


def config_key(arg: str, rule: str, outputs: list[str]) -> str | None:
    """The config key an argument of ``rule`` comes from (the wiring names flags after keys)."""
    if arg in _RENAMED and (rule.startswith("gate") or rule.startswith("bench")):
        return _RENAMED[arg]
    keys = [k for k in _schema_keys() if k.rsplit(".", 1)[-1] == arg]
    if len(keys) <= 1:
        return keys[0] if keys else None
    section = rule.split("_")[0]
    hit = [k for k in keys if k.split(".")[0] == section]
    if len(hit) == 1:  # quantize_scales' --seq-length is quantize.seq_length, in any phase
        return hit[0]
    text = " ".join(outputs)
    # train.<phase>.x: the phase is in the output path
    for phase in ("pretrain", "sft", "dpo", "lora"):
        if f"/{phase}/" in text or f"/{phase}_" in text or f"shards/{phase}" in text:
            hit = [k for k in keys if f".{phase}." in k]
            if len(hit) == 1:
                return hit[0]
    for part in rule.split("_")[1:]:  # bench_static -> bench.static.x
        hit = [k for k in keys if f".{part}." in k]
        if len(hit) == 1:
            return hit[0]
    section = rule.split("_")[0]
    hit = [k for k in keys if k.split(".")[0] == section or k.split(".")[1:2] == [section]]
    if len(hit) == 1:
        return hit[0]
    return " or ".join(keys)


@functools.cache
def env_packages(prefix: str) -> dict[str, str] | None:
    """name -> version of what is installed in a virtual environment now (None if absent)."""
    sites = sorted(Path(prefix).glob("lib/python*/site-packages"))
    if not sites:
        return None
    out = {}
    for dist in importlib_metadata.distributions(path=[str(s) for s in sites]):
        name = dist.metadata.get("Name")
        if name:
            out[name.lower()] = dist.version
    # private copies inside packages (setuptools/_vendor): seen by a process only after it
    # imports their owner, so a record may or may not list them; they are not compared
    for info in (d for s in sites for d in s.glob("*/_vendor/*.dist-info")):
        out.setdefault(info.name.split("-")[0].lower(), VENDORED)
    return out


VENDORED = "(vendored)"


def env_prefix(executable: str | None) -> str | None:
    """The environment a recorded interpreter belongs to (``.envs/train``), if a venv."""
    if not executable:
        return None
    p = Path(executable)
    return str(p.parent.parent) if p.parent.name == "bin" else None


# what `pip freeze` leaves out, and the project itself (installed editable)
_NOT_FROZEN = {"pip", "setuptools", "wheel", "distribute", "llmbuild"}


def same_version(pin: str, installed: str | None) -> bool:
    """A pin without a local label (2.13.0) is met by a local build of it (2.13.0+cpu)."""
    if installed is None:
        return False
    return installed == pin or ("+" not in pin and installed.split("+")[0] == pin)


def packages_diff(recorded: dict[str, str], now: dict[str, str], frozen: bool = False) -> list[str]:
    out = []
    for name in sorted(recorded.keys() | now.keys()):
        if name == "llmbuild" or (frozen and name in _NOT_FROZEN):
            continue
        a, b = recorded.get(name), now.get(name)
        if b == VENDORED:
            continue
        if a != b:
            out.append(f"{name} {a or '(absent)'} -> {b or '(absent)'}")
    return out


_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;#]+)")


def spec_pins(spec: Path) -> dict[str, str]:
    """name -> version of the ``name==version`` lines of a requirements file."""
    pins = {}
    for line in spec.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            pins[re.sub(r"\[.*\]", "", m[1]).lower().replace("_", "-")] = m[2]
    return pins


def frozen(packages: list[str]) -> dict[str, str]:
    out = {}
    for line in packages:
        m = _PIN.match(line)
        if m:
            out[m[1].lower().replace("_", "-")] = m[2]
    return out


@functools.cache
def source_now(src: str, rel: str) -> str | None:
    path = Path(src) / rel
    return provenance.file_digest(path) if path.is_file() else None
