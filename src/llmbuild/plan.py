"""Planning: config validation with one-line errors, catalog checks, and the graph's variants.

Called by rules/common.smk when the graph is planned, so a bad config or an unsupported
model/quantization pair stops before any job runs.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

from llmbuild import catalog, hfdir, parallel
from llmbuild.errors import UserError
from llmbuild.serve import sweep


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


def phases(config: dict[str, Any]) -> list[str]:
    """The training chain (train.phases), each phase from the previous one's checkpoint."""
    return list(config["train"]["phases"])


def previous_phase(config: dict[str, Any], phase: str) -> str:
    """The checkpoint ``phase`` starts from: the phase before it in the chain, or the base."""
    chain = phases(config)
    i = chain.index(phase)
    return chain[i - 1] if i else "base"


def final_phase(config: dict[str, Any]) -> str:
    """The chain's last phase: the model quantized variants are made from."""
    return phases(config)[-1]


def served_variants(config: dict[str, Any]) -> list[str]:
    """Served models: the evaluated ones plus one per quantization scheme of the last phase's
    model."""
    out = list(config["eval"]["variants"])
    out += [f"{final_phase(config)}-{s}" for s in config["quantize"]["schemes"]]
    return list(dict.fromkeys(out))


def bench_variants(config: dict[str, Any]) -> list[str]:
    """The served variants benchmarked: bench.variants, or (null) every served one but the
    untrained base, which has the trained model's shape and would repeat its figures (the
    base alone when nothing else is served)."""
    chosen = config["bench"].get("variants")
    if chosen is not None:
        return list(dict.fromkeys(chosen))
    served = served_variants(config)
    return [v for v in served if v != "base"] or served


def _unknown_variant(config: dict[str, Any], variant: str) -> str:
    chain = phases(config)
    return (
        f"{variant!r} is not a served variant of this chain (train.phases: "
        f"{', '.join(chain)}); use base, {', '.join(chain)} or {chain[-1]}-<scheme>"
    )


def variant_model_dir(config: dict[str, Any], model: str, variant: str) -> str:
    """results/<model>/<phase>/hf or .../<phase>/quant/<scheme> for a served variant."""
    phase, _, scheme = variant.partition("-")
    if phase not in ("base", *phases(config)):
        raise UserError(_unknown_variant(config, variant), field="eval.variants")
    if scheme:
        return f"results/{model}/{phase}/quant/{scheme}"
    return f"results/{model}/{phase}/hf"


def fill_layout(config: dict[str, Any], models: dict[str, Any]) -> None:
    """train.tp, train.pp and each phase's micro_batch_size left unset (null) take the
    catalog's recommended layout for the model (the seeds' table: full training at the
    longest phase's sequence length); on device cpu only a single-device recommendation
    applies (the seeds' are for NPU servers). Otherwise tp = pp = 1 and one micro-batch per
    step. The config is filled in place, so every rule sees the same concrete layout."""
    train = config["train"]
    chain = [train[p] for p in phases(config)]
    if train["tp"] is not None and train["pp"] is not None:
        if all(p["micro_batch_size"] is not None for p in chain):
            return
    seq = max(p["seq_length"] for p in chain)
    rec = catalog.recommend(models, config["model"]["name"], "full", seq)
    if rec is not None and train["device"] == "cpu" and rec["npus_per_node"] * rec["nodes"] > 1:
        rec = None
    for key in ("tp", "pp"):
        if train[key] is None:
            train[key] = int(rec[key]) if rec else 1
    for p in chain:
        if p["micro_batch_size"] is None:
            p["micro_batch_size"] = int(rec["mbs"]) if rec else p["global_batch_size"]


def check_plan(config: dict[str, Any], catalog_path: str | Path, source: str) -> None:
    """Refuse, at planning time, what the catalog or the config's own logic rules out."""
    models = catalog.load(catalog_path)
    fill_layout(config, models)
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
    check_quantize(config, models, catalog_path, source)
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
    if "dpo" in phases(config) and config["train"]["pp"] > 1:
        raise UserError(
            "a dpo phase trains with pp 1 (its frozen reference runs beside the policy); set "
            "train.pp: 1 (tp and dp work)",
            path=source,
            field="train.pp",
        )
    dp = config["train"]["dp"]
    for phase in phases(config):
        p = config["train"][phase]
        if p["global_batch_size"] % (p["micro_batch_size"] * dp):
            raise UserError(
                f"{p['global_batch_size']} is not a multiple of micro_batch_size "
                f"{p['micro_batch_size']} x train.dp {dp}; make it one",
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
    check_lora(config, source)
    check_paths(config, source)
    check_resume_layout(config, source)
    sweep.check(config, source, served_variants(config))


# --- several models in one graph (models:) -----------------------------------------------

# an entry's own model keys (merged over model:); its other keys are sections
MODEL_KEYS = ("name", "source", "path", "tiny")
# what every model of one graph shares: one device kind, one serving stack
AGREE_KEYS = ("train.device", "train.nodes", "serve.device", "serve.stack")


def merged(base: Any, over: Any) -> Any:
    """``over`` merged over ``base``: mappings key by key, anything else replaced."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out.get(key), value)
    return out


def model_config(config: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The one-model config of a ``models:`` entry: its model keys over model:, its sections
    over the top-level ones."""
    cfg = {k: copy.deepcopy(v) for k, v in config.items() if k != "models"}
    cfg["model"] = merged(config["model"], {k: entry[k] for k in MODEL_KEYS if k in entry})
    for key, value in entry.items():
        if key not in MODEL_KEYS:
            cfg[key] = merged(config.get(key, {}), value)
    return cfg


def _entry_sets(entry: dict[str, Any], field: str) -> bool:
    parts = field.split(".")
    cur: Any = {"model": {k: entry[k] for k in MODEL_KEYS if k in entry}, **entry}
    for part in parts:
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return True


def _entry_field(i: int, entry: dict[str, Any], field: str) -> str:
    """models.<i>.<key> where the entry sets the key, else the top-level key."""
    if not _entry_sets(entry, field):
        return field
    return f"models.{i}.{field.removeprefix('model.')}"


def _for_model(exc: UserError, i: int, entry: dict[str, Any], source: str) -> UserError:
    """A one-model config's error, pointed at the models: entry that made it."""
    field = exc.field or ""
    where = _entry_field(i, entry, field) if field else ""
    detail = exc.detail
    if not where.startswith("models."):
        detail += f" (for model {entry['name']!r}, models.{i})"
    return UserError(detail, path=exc.path or source, field=where or None)


def plan_models(
    config: dict[str, Any],
    schema: dict[str, Any],
    catalog_path: str | Path,
    source: str,
    fill: Any,
) -> dict[str, dict[str, Any]]:
    """Each model's own config, checked and planned (check_plan), by name. Without models:
    the config itself is the one model's. ``fill`` fills a config's schema defaults in place
    (Snakemake's validate): an entry's sections may add list items whose defaults are unset."""
    entries = config.get("models")
    if not entries:
        check_plan(config, catalog_path, source)
        return {config["model"]["name"]: config}
    out: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries):
        name = entry["name"]
        if name in out:
            raise UserError(
                f"{name!r} is listed twice; name each model once (its results/<name>/)",
                path=source,
                field=f"models.{i}.name",
            )
        cfg = model_config(config, entry)
        try:
            check_config(cfg, schema, source)
            fill(cfg)
            check_plan(cfg, catalog_path, source)
        except UserError as exc:
            raise _for_model(exc, i, entry, source) from None
        out[name] = cfg
    _check_agree(list(out.values()), entries, source)
    return out


def _get(config: dict[str, Any], key: str) -> Any:
    section, field = key.split(".")
    return config[section][field]


def _check_agree(configs: list[dict[str, Any]], entries: list[dict[str, Any]], source: str) -> None:
    first = configs[0]
    for key in AGREE_KEYS:
        for i, cfg in enumerate(configs[1:], start=1):
            if _get(cfg, key) != _get(first, key):
                raise UserError(
                    f"{_get(cfg, key)!r} differs from {_get(first, key)!r} of model "
                    f"{entries[0]['name']!r}: the models of one graph train and serve on "
                    "one device kind with one serving stack; make them agree, or plan a "
                    "graph per device",
                    path=source,
                    field=_entry_field(i, entries[i], key),
                )


LAYOUT_KEYS = ("tp", "pp", "dp")


def check_resume_layout(config: dict[str, Any], source: str) -> None:
    """A training job killed midway resumes from ``<output>.partial/`` in the same parallel
    layout it started with (the seeds' rule: TP/PP unchanged on resume). A layout changed
    since then is refused here, naming the way out, instead of silently starting over."""
    import json

    train = config["train"]
    for phase in phases(config):
        work = Path(f"results/{config['model']['name']}/{phase}/mcore.partial")
        try:
            old = json.loads((work / "llmbuild_train.json").read_text())["args"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not list(work.glob("iter_*")):
            continue  # nothing saved yet: nothing to resume
        was = {k: old.get(k, 1) for k in LAYOUT_KEYS}
        now = {k: train[k] for k in LAYOUT_KEYS}
        if was != now:
            said = " ".join(f"{k}={v}" for k, v in was.items())
            raise UserError(
                f"{work} holds a killed run saved at {said}; a resume keeps its parallel "
                f"layout: set train.tp/pp/dp back to {said}, or delete {work} to start over",
                path=source,
                field="train.tp",
            )


def check_quantize(
    config: dict[str, Any], models: dict[str, Any], catalog_path: str | Path, source: str
) -> None:
    """Every scheme: the catalog supports it for this model, the serving stack serves it on
    its device; a reused scale file is one, made with this smoothing strength."""
    from llmbuild.quantize import scales, schemes

    name = config["model"]["name"]
    quant = config["quantize"]
    stack, device = config["serve"]["stack"], config["serve"]["device"]
    for scheme in quant["schemes"]:
        if not catalog.supports(models, name, scheme):
            column = catalog.SCHEME_COLUMN[scheme]
            ok = ", ".join(catalog.supported_models(models, scheme)[:6])
            raise UserError(
                f"model {name!r} does not support {scheme} per the catalog "
                f"{catalog_path} (column {column}); remove it from quantize.schemes (models "
                f"with {column}: {ok}, ...)",
                path=source,
                field="quantize.schemes",
            )
        refusal = schemes.serving_refusal(scheme, stack, device)
        if refusal is not None:
            ok = ", ".join(schemes.servable(stack, device))
            raise UserError(
                f"{scheme} cannot be served by {stack} on {device} ({refusal}); remove it "
                f"from quantize.schemes (this stack serves {ok}) or set serve.stack / "
                "serve.device to a stack that serves it",
                path=source,
                field="quantize.schemes",
            )
    _file(quant["calib"], source, "quantize.calib", (".jsonl", ".json"))
    path = quant["scale_input"]
    if path is not None:
        _file(path, source, "quantize.scale_input", (".safetensors",))
        meta = scales.read_metadata(path, field="quantize.scale_input")
        made = float(meta.get("smoothing_strength", "nan"))
        if made != quant["smoothing_strength"]:
            raise UserError(
                f"{path} was made with smoothing strength {made}, but "
                f"quantize.smoothing_strength is {quant['smoothing_strength']}; set it to "
                f"{made} or remove quantize.scale_input to compute new scales",
                path=source,
                field="quantize.scale_input",
            )


def check_cross_fields(config: dict[str, Any], source: str) -> None:
    """Rules between keys that the schema cannot say."""
    data_len, sft_len = config["data"]["seq_length"], config["train"]["sft"]["seq_length"]
    if data_len is not None and "sft" in phases(config) and data_len > sft_len:
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
    known = ("base", *phases(config))
    for variant in config["eval"]["variants"]:
        if variant.partition("-")[0] not in known:
            raise UserError(_unknown_variant(config, variant), path=source, field="eval.variants")
    served = served_variants(config)
    for variant in config["bench"].get("variants") or ():
        if variant not in served:
            raise UserError(
                f"{variant!r} is not served (served: {', '.join(served)}); benchmark one of"
                " them, or add it to eval.variants or quantize.schemes",
                path=source,
                field="bench.variants",
            )
    check_mindie(config, source, served)


def check_mindie(config: dict[str, Any], source: str, served: list[str]) -> None:
    """mindie.* against the served variants and serve.* (what generate() would refuse)."""
    from llmbuild.serve import mindie

    m, serve = config["mindie"], config["serve"]
    if not m["enabled"]:
        return
    for variant in m["variants"] or ():
        if variant not in served:
            raise UserError(
                f"{variant!r} is not served (served: {', '.join(served)}); write MindIE's"
                " config for one of them, or add it to eval.variants or quantize.schemes",
                path=source,
                field="mindie.variants",
            )
    settings = mindie.Settings(
        model_dir="planned",
        model_name=m["model_name"] or config["model"]["name"],
        **{k: serve[k] for k in mindie.SERVE_KEYS},
        **{k: m[k] for k in mindie.KEYS},
    )
    try:
        mindie.generate(settings)
    except UserError as exc:
        raise UserError(str(exc), path=source) from None


# served names the LoRA service or the graph's variants use already
RESERVED_ADAPTER_NAMES = ("base", "pretrain", "sft", "lora")


def check_lora(config: dict[str, Any], source: str) -> None:
    """train.lora and the keys of the LoRA service (serve.max_loras, serve.max_lora_rank,
    bench.dynamic.lora_mix): what the schema cannot say."""
    lora = config["train"]["lora"]
    names = [a["name"] for a in lora["adapters"]]
    serve = config["serve"]
    mix = config["bench"]["dynamic"]["lora_mix"]
    if not names:
        for key, value in (
            ("serve.max_loras", serve["max_loras"]),
            ("serve.max_lora_rank", serve["max_lora_rank"]),
            ("bench.dynamic.lora_mix", mix),
        ):
            if value is not None:
                raise UserError(
                    "is for the LoRA service, and train.lora.adapters is empty; add adapters "
                    "or remove it",
                    path=source,
                    field=key,
                )
        return
    for i, name in enumerate(names):
        where = f"train.lora.adapters.{i}.name"
        if name in names[:i]:
            raise UserError(
                f"{name!r} is used twice; name each adapter once", path=source, field=where
            )
        if name in RESERVED_ADAPTER_NAMES:
            raise UserError(
                f"{name!r} is a served model name already ({', '.join(RESERVED_ADAPTER_NAMES)}); "
                "choose another",
                path=source,
                field=where,
            )
    if lora["global_batch_size"] % lora["micro_batch_size"]:
        raise UserError(
            "global_batch_size must be a multiple of micro_batch_size",
            path=source,
            field="train.lora.global_batch_size",
        )
    if lora["warmup_iters"] >= lora["iters"]:
        raise UserError(
            f"{lora['warmup_iters']} warmup steps but only {lora['iters']} steps; make "
            "warmup_iters smaller than iters",
            path=source,
            field="train.lora.warmup_iters",
        )
    if lora["min_lr"] > lora["lr"]:
        raise UserError(
            f"{lora['min_lr']} is above lr {lora['lr']}", path=source, field="train.lora.min_lr"
        )
    data_len = config["data"]["seq_length"]
    if data_len is not None and data_len > lora["seq_length"]:
        raise UserError(
            f"{data_len} is above train.lora.seq_length {lora['seq_length']}: adapter examples "
            "longer than that would be cut at training without a word; lower data.seq_length "
            "or raise train.lora.seq_length",
            path=source,
            field="data.seq_length",
        )
    rank = serve["max_lora_rank"]
    if rank is not None and rank < lora["rank"]:
        raise UserError(
            f"{rank} is below train.lora.rank {lora['rank']}: vLLM would refuse the adapters; "
            "raise it or leave it null (the smallest size that holds the rank)",
            path=source,
            field="serve.max_lora_rank",
        )
    if mix is not None:
        served = [*names, lora["from"]]
        for part in str(mix).split(","):
            name = part.split("=", 1)[0].strip()
            if name not in served:
                raise UserError(
                    f"{name!r} is not served by the LoRA service; use its names: "
                    f"{', '.join(served)} (train.lora.adapters and train.lora.from)",
                    path=source,
                    field="bench.dynamic.lora_mix",
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


def check_paths(config: dict[str, Any], source: str) -> None:
    """Every path in the config exists and is the kind of file or directory its stage reads."""
    model = config["model"]
    if model["source"] == "hf":
        hfdir.check(model["path"], field="model.path", where=source)
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
    _file(data["dpo"]["path"], source, "data.dpo.path", INSTRUCTION_SUFFIXES)
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
    return hfdir.num_layers(model["path"] or "")


def check_pipeline_split(config: dict[str, Any], source: str) -> None:
    """train.pp_layers gives one layer count >= 1 per pipeline stage, summing to the model's
    layers (when known); without it, pp must divide the layers (llmbuild.parallel)."""
    train = config["train"]
    parallel.check_split(
        model_num_layers(config),
        train["pp"],
        train.get("pp_layers"),
        field="train.pp_layers",
        pp_field="train.pp",
        where=source,
    )


def check_cluster(configs: list[dict[str, Any]], resource_settings: Any, source: str) -> None:
    """With a Slurm profile (a slurm_partition resource): the partition exists and has the
    nodes training asks for (asked once: the models of a graph agree on train.nodes).
    Multi-node training splits each model's ranks evenly over the nodes."""
    import sys

    from llmbuild.cluster import launch, slurm

    for config in configs:
        train = config["train"]
        try:
            launch.ranks_per_node(train["tp"] * train["pp"] * train["dp"], train["nodes"])
        except UserError as exc:
            raise UserError(exc.detail, path=source, field="train.nodes") from None
    defaults = getattr(resource_settings.default_resources, "args", None) or []
    partition = slurm.requested_partition(defaults, resource_settings.overwrite_resources)
    if partition:
        profile = slurm.profile_name(sys.argv, dict(os.environ))
        slurm.check_partition(partition, configs[0]["train"]["nodes"], profile, source)
