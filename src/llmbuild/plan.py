"""Planning: config validation with one-line errors, catalog checks, and the graph's variants.

Called by rules/common.smk when the graph is planned, so a bad config or an unsupported
model/quantization pair stops before any job runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llmbuild import catalog
from llmbuild.errors import UserError


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def _dotted(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<top>"


def check_config(config: dict[str, Any], schema: dict[str, Any], source: str) -> None:
    """Raise UserError with one line for the first schema violation in ``config``."""
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    errors = sorted(cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    err = errors[0]
    where = _dotted(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        key = where + "." + extra[0] if err.absolute_path else extra[0]
        raise UserError(f"unknown key; allowed here: {', '.join(allowed)}", path=source, field=key)
    if err.validator == "enum":
        raise UserError(
            f"{err.instance!r} is not one of {err.validator_value}", path=source, field=where
        )
    raise UserError(err.message, path=source, field=where)


def served_variants(config: dict[str, Any]) -> list[str]:
    """Served models: the evaluated ones plus one per quantization scheme of the SFT model."""
    out = list(config["eval"]["variants"])
    out += [f"sft-{s}" for s in config["quantize"]["schemes"]]
    return list(dict.fromkeys(out))


def variant_model_dir(model: str, variant: str) -> str:
    """results/<model>/<phase>/hf or .../<phase>/quant/<scheme> for a served variant."""
    phase, _, scheme = variant.partition("-")
    if phase not in ("base", "pretrain", "sft"):
        raise UserError(
            f"unknown served variant {variant!r}; use base, pretrain, sft or sft-<scheme>",
            field="eval.variants",
        )
    if scheme:
        return f"results/{model}/{phase}/quant/{scheme}"
    return f"results/{model}/{phase}/hf"


def check_plan(config: dict[str, Any], catalog_path: str | Path, source: str) -> None:
    """Refuse, at planning time, what the catalog or the config's own logic rules out."""
    models = catalog.load(catalog_path)
    name = config["model"]["name"]
    schemes = config["quantize"]["schemes"]
    if config["model"]["source"] == "hf" and not config["model"]["path"]:
        raise UserError(
            "source hf needs model.path (a local HF directory)", path=source, field="model.path"
        )
    if schemes and name not in models:
        raise UserError(
            f"model {name!r} is not in the catalog {catalog_path}, so quantization "
            "support cannot be checked; add it there or set quantize.schemes: []",
            path=source,
            field="model.name",
        )
    for scheme in schemes:
        if not catalog.supports(models, name, scheme):
            ok = ", ".join(catalog.supported_models(models, scheme)[:6])
            raise UserError(
                f"model {name!r} does not support {scheme} per the catalog "
                f"{catalog_path}; remove it from quantize.schemes (models with "
                f"{scheme}: {ok}, ...)",
                path=source,
                field="quantize.schemes",
            )
    lens = config["bench"]["static"]
    if len(lens["input_len"]) != len(lens["output_len"]):
        raise UserError(
            "input_len and output_len must have the same length (they are pairs)",
            path=source,
            field="bench.static.output_len",
        )
    sft = config["data"]["sft"]
    if sft["path"] and not sft["heldout"]:
        raise UserError(
            "an instruction dataset needs a held-out split for evaluation",
            path=source,
            field="data.sft.heldout",
        )
    if sft["min_len"] > sft["max_len"]:
        raise UserError("min_len must be <= max_len", path=source, field="data.sft.min_len")
    for phase in ("pretrain", "sft"):
        p = config["train"][phase]
        if p["global_batch_size"] % p["micro_batch_size"]:
            raise UserError(
                "global_batch_size must be a multiple of micro_batch_size",
                path=source,
                field=f"train.{phase}.global_batch_size",
            )
