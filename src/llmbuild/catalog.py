"""The model catalog (config/catalog.yaml): recommended layouts and quantization support."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmbuild.errors import UserError
from llmbuild.quantize.schemes import SCHEMES

#: a scheme (llmbuild.quantize.schemes, or a catalog column's own name) -> its column
SCHEME_COLUMN = {
    **{name: s.catalog for name, s in SCHEMES.items()},
    "w4a16": "w4a16",
    "kv_cache_int8": "kv_cache_int8",
    "fp16": "fp16_bf16",
    "bf16": "fp16_bf16",
}


def load(path: str | Path) -> dict[str, Any]:
    from llmbuild.schema import read_yaml

    data = read_yaml(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise UserError("must be a mapping with a 'models' mapping", path=path, field="models")
    return data["models"]


def supports(models: dict[str, Any], model: str, scheme: str) -> bool:
    return bool(models.get(model, {}).get("quantization", {}).get(SCHEME_COLUMN[scheme], False))


def supported_models(models: dict[str, Any], scheme: str) -> list[str]:
    return sorted(m for m in models if supports(models, m, scheme))


def recommend(
    models: dict[str, Any], model: str, strategy: str = "full", seq_len: int | None = None
) -> dict[str, Any] | None:
    """The seeds' recommended TP/PP/MBS/nodes for a model, or None when there is none."""
    rows = [r for r in models.get(model, {}).get("train", []) if r["strategy"] == strategy]
    if seq_len is not None:
        fitting = [r for r in rows if r["seq_len"] >= seq_len]
        rows = sorted(fitting, key=lambda r: r["seq_len"]) or rows
    return rows[0] if rows else None
