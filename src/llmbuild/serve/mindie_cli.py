"""`llmbuild mindie config|check`: MindIE Service's config.json for a served variant.

    llmbuild mindie config --model-dir DIR --output results/M/mindie/V/config.json [knobs]
    llmbuild mindie check config.json     # a hand-edited file against the documented keys

The graph writes one per variant of ``mindie.variants`` when ``mindie.enabled``; MindIE runs
on Ascend servers only, so nothing here starts it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from llmbuild.errors import UserError
from llmbuild.schema import default


def _model_length(model_dir: Path) -> int | None:
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        raise UserError(
            "not a Hugging Face model directory (no config.json)",
            path=model_dir,
            field="--model-dir",
        )
    try:
        doc = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"not JSON ({exc}); rewrite it from the model", path=cfg) from None
    for key in ("max_position_embeddings", "seq_length"):
        if isinstance(doc.get(key), int):
            return doc[key]
    return None


def _config(args: argparse.Namespace) -> int:
    from llmbuild import provenance
    from llmbuild.atomic import atomic_file
    from llmbuild.serve import mindie

    started = time.time()
    model_dir = Path(args.model_dir)
    longest = _model_length(model_dir)
    if longest is not None and args.max_model_len > longest:
        raise UserError(
            f"{args.max_model_len} is above the model's {longest} positions"
            f" ({model_dir}/config.json);"
            " MindIE's maxSeqLen must fit the model: lower it",
            field="serve.max_model_len",
        )
    fields = {f.name for f in dataclasses.fields(mindie.Settings)}
    settings = mindie.Settings(**{k: v for k, v in vars(args).items() if k in fields})
    doc = mindie.generate(settings)
    out = Path(args.output)
    with atomic_file(out) as fh:
        json.dump(doc, fh, indent=2, ensure_ascii=False)
        fh.write("\n")
    provenance.write(
        out,
        command="mindie config",
        args=vars(args),
        inputs=[model_dir / "config.json"],
        started=started,
    )
    backend = doc["BackendConfig"]
    print(
        f"wrote {out}: {settings.nodes} node(s) x {len(backend['npuDeviceIds'][0])} NPU(s),"
        f" maxSeqLen {backend['ModelDeployConfig']['maxSeqLen']}, weights"
        f" {backend['ModelDeployConfig']['ModelConfig'][0]['modelWeightPath']}"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from llmbuild.serve import mindie

    path = Path(args.file)
    if not path.is_file():
        raise UserError("no such file", path=path)
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"not JSON ({exc})", path=path) from None
    mindie.validate(doc, path)
    print(f"{path}: every key documented, present and of its type; the seeds' rules hold")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    from llmbuild.serve import mindie

    cfg = verbs.add_parser("config", help="write config.json for one served variant")
    cfg.add_argument("--model-dir", required=True, help="the variant's Hugging Face directory")
    cfg.add_argument("--output", required=True, help="config.json to write")
    cfg.add_argument("--model-name", required=True, help="modelName (e.g. DeepSeek-V3)")
    for key in mindie.SERVE_KEYS:
        _flag(cfg, f"serve.{key}", key)
    for key in mindie.KEYS:
        _flag(cfg, f"mindie.{key}", key)
    cfg.set_defaults(func=_config)
    check = verbs.add_parser("check", help="check a config.json against MindIE's documented keys")
    check.add_argument("file")
    check.set_defaults(func=_check)


def _flag(parser: argparse.ArgumentParser, key: str, name: str) -> None:
    from llmbuild.schema import describe, node

    spec = node(key)
    kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    flag = "--" + name.replace("_", "-")
    kw: dict[str, object] = {"dest": name, "default": default(key), "help": describe(key)}
    if "boolean" in kinds:
        kw["action"] = argparse.BooleanOptionalAction
    else:
        kw["type"] = int if "integer" in kinds else str
    parser.add_argument(flag, **kw)
