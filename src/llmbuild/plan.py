"""Planning: config validation with one-line errors, catalog checks, and the graph's variants.

Called by rules/common.smk when the graph is planned, so a bad config or an unsupported
model/quantization pair stops before any job runs.
"""

from __future__ import annotations

import json
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
    check_pipeline_split(config, source)
    for phase in ("pretrain", "sft"):
        p = config["train"][phase]
        if p["global_batch_size"] % p["micro_batch_size"]:
            raise UserError(
                "global_batch_size must be a multiple of micro_batch_size",
                path=source,
                field=f"train.{phase}.global_batch_size",
            )


def model_num_layers(config: dict[str, Any]) -> int | None:
    """The model's decoder layer count when planning can know it: the tiny model's config,
    or the config.json of a local HF directory; None otherwise."""
    model = config["model"]
    if model["source"] == "tiny":
        return int(model["tiny"]["num_layers"])
    path = Path(model["path"] or "") / "config.json"
    try:
        hf = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    n = hf.get("num_hidden_layers") if isinstance(hf, dict) else None
    return n if isinstance(n, int) else None


def check_pipeline_split(config: dict[str, Any], source: str) -> None:
    """train.pp_layers gives one layer count >= 1 per pipeline stage, summing to the model's
    layers (when known); without it, pp must divide the layers evenly."""
    train = config["train"]
    pp, layers = train["pp"], train.get("pp_layers")
    n = model_num_layers(config)
    if n is not None and pp > n:
        raise UserError(
            f"pp={pp} is more than the model's {n} layers; every pipeline stage needs at least "
            f"one layer, so use pp <= {n}",
            path=source,
            field="train.pp",
        )
    if layers is None:
        if n is not None and n % pp:
            raise UserError(
                f"pp={pp} does not divide the model's {n} layers; set train.pp_layers "
                f"(layers per stage, e.g. {_example_split(n, pp)}) or another pp",
                path=source,
                field="train.pp",
            )
        return
    given = ",".join(str(x) for x in layers)
    if len(layers) != pp:
        raise UserError(
            f"[{given}] has {len(layers)} stages but train.pp is {pp}; give one layer count "
            "per pipeline stage (or set train.pp to match)",
            path=source,
            field="train.pp_layers",
        )
    if min(layers) < 1:
        raise UserError(
            f"[{given}]: every pipeline stage needs at least 1 layer",
            path=source,
            field="train.pp_layers",
        )
    if n is not None and sum(layers) != n:
        raise UserError(
            f"[{given}] sums to {sum(layers)} but the model has {n} layers; make the layer "
            f"counts sum to {n} (e.g. {_example_split(n, pp)})",
            path=source,
            field="train.pp_layers",
        )


def _example_split(n: int, pp: int) -> str:
    """A split of ``n >= pp`` layers over ``pp`` stages, the larger stages last, e.g. 4 over
    3 -> [1,1,2]."""
    base, extra = divmod(n, pp)
    return "[" + ",".join(str(base + (i >= pp - extra)) for i in range(pp)) + "]"
