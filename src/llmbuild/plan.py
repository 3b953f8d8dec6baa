"""Planning: config validation with one-line errors, catalog checks, and the graph's variants.

Called by rules/common.smk when the graph is planned, so a bad config or an unsupported
model/quantization pair stops before any job runs.
"""

from __future__ import annotations

import json
import os
import shutil
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
        if p["warmup_iters"] >= p["iters"]:
            raise UserError(
                f"{p['warmup_iters']} warmup steps but only {p['iters']} steps; make "
                "warmup_iters smaller than iters",
                path=source,
                field=f"train.{phase}.warmup_iters",
            )
    check_cross_fields(config, source)
    check_paths(config, source)


def check_cross_fields(config: dict[str, Any], source: str) -> None:
    """Rules between keys that the schema cannot say."""
    data_len, sft_len = config["data"]["seq_length"], config["train"]["sft"]["seq_length"]
    if data_len is not None and data_len > sft_len:
        raise UserError(
            f"{data_len} is above train.sft.seq_length {sft_len}: SFT examples between "
            f"{sft_len + 1} and {data_len} tokens would be cut at training without a word; "
            "set data.seq_length <= train.sft.seq_length, or null (each phase's own length)",
            path=source,
            field="data.seq_length",
        )
    dyn = config["bench"]["dynamic"]
    if len(dyn["num_prompts"]) not in (1, len(dyn["request_rate"])):
        raise UserError(
            f"{len(dyn['num_prompts'])} values for {len(dyn['request_rate'])} request rates; "
            "give one per rate, or one for all",
            path=source,
            field="bench.dynamic.num_prompts",
        )
    ds = config["bench"]["dataset"]
    for side in ("input", "output"):
        lo, hi, avg = ds[f"min_{side}"], ds[f"max_{side}"], ds[f"avg_{side}"]
        if lo > hi:
            raise UserError(
                f"{lo} is above max_{side} {hi}", path=source, field=f"bench.dataset.min_{side}"
            )
        if not lo <= avg <= hi:
            raise UserError(
                f"{avg} is outside [min_{side}, max_{side}] = [{lo}, {hi}]",
                path=source,
                field=f"bench.dataset.avg_{side}",
            )
    for variant in config["eval"]["variants"]:
        if variant.partition("-")[0] not in ("base", "pretrain", "sft"):
            raise UserError(
                f"unknown served variant {variant!r}; use base, pretrain, sft or sft-<scheme>",
                path=source,
                field="eval.variants",
            )


PRETRAIN_SUFFIXES = (".parquet", ".json", ".jsonl", ".txt", ".text", ".md")
INSTRUCTION_SUFFIXES = (".json", ".jsonl")


def _file(path: str | None, source: str, key: str, suffixes: tuple[str, ...]) -> None:
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path} does not exist; fix the path", path=source, field=key)
    if not p.is_file():
        raise UserError(f"{path} is not a file", path=source, field=key)
    if suffixes and p.suffix not in suffixes:
        raise UserError(
            f"{path}: unknown format {p.suffix!r}; use {', '.join(suffixes)}",
            path=source,
            field=key,
        )


def check_hf_dir(path: str, source: str, key: str) -> None:
    """A directory a stage can read as a Hugging Face model: config.json, a tokenizer and
    safetensors weights (never pickled .bin files)."""
    p = Path(path)
    if not p.exists():
        raise UserError(
            f"{path} does not exist; give a local HF model directory", path=source, field=key
        )
    if not p.is_dir():
        raise UserError(
            f"{path} is not a directory; give a local HF model directory", path=source, field=key
        )
    if not (p / "config.json").is_file():
        raise UserError(
            f"{path} has no config.json; is it a Hugging Face model directory?",
            path=source,
            field=key,
        )
    try:
        hf = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}/config.json is not JSON ({exc})", path=source, field=key) from None
    if not isinstance(hf, dict):
        raise UserError(f"{path}/config.json is not a JSON object", path=source, field=key)
    if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise UserError(
            f"{path} has no tokenizer.json or tokenizer.model; copy the tokenizer files in",
            path=source,
            field=key,
        )
    if not any(p.glob("*.safetensors")):
        pickled = any(p.glob("*.bin")) or any(p.glob("*.pt"))
        hint = (
            "it holds only pickled .bin/.pt weights, which are never unpickled; convert them to "
            "safetensors"
            if pickled
            else "no *.safetensors weights"
        )
        raise UserError(f"{path}: {hint}", path=source, field=key)


def check_paths(config: dict[str, Any], source: str) -> None:
    """Every path in the config exists and is the kind of file or directory its stage reads."""
    model = config["model"]
    if model["source"] == "hf":
        check_hf_dir(model["path"], source, "model.path")
    elif model["path"] is not None:
        raise UserError(
            "model.path is only read with source: hf; set source: hf or remove the path",
            path=source,
            field="model.path",
        )
    data = config["data"]
    _file(data["pretrain"]["path"], source, "data.pretrain.path", PRETRAIN_SUFFIXES)
    _file(data["sft"]["path"], source, "data.sft.path", INSTRUCTION_SUFFIXES)
    _file(data["sft"]["heldout"], source, "data.sft.heldout", (".jsonl",))
    ds = config["bench"]["dataset"]
    if ds["type"] != "generated":
        if not ds["path"]:
            raise UserError(
                f"dataset type {ds['type']!r} needs a file; set path or use type: generated",
                path=source,
                field="bench.dataset.path",
            )
        _file(ds["path"], source, "bench.dataset.path", ())
    elif ds["path"] is not None:
        raise UserError(
            "a generated dataset reads no file; remove path or set the type of that file",
            path=source,
            field="bench.dataset.path",
        )
    _file(config["serve"]["chat_template"], source, "serve.chat_template", ())
    envs = config["envs"]
    if envs["mode"] == "venv" and shutil.which(envs["python"]) is None:
        raise UserError(
            f"interpreter {envs['python']!r} not found on PATH; set envs.python to a Python "
            "3.10+ executable",
            path=source,
            field="envs.python",
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
