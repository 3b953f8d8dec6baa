"""A Hugging Face model directory: what every stage that reads or writes one requires of it.

One place for the file lists and the checks (planning, conversion, quantization and serving all
ask the same questions: is there a config, a tokenizer, safetensors weights, a chat template),
so a directory one stage accepts is never refused by the next. Standard library only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError

#: A tokenizer a server or transformers can load: any one of these.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
#: What a complete directory carries beside its weights (the seeds warn that reconverted
#: directories lose these and then cannot be served); copied from a source when present.
COMPANION_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
#: Pickled weight files: never unpickled; a directory with only these must be converted.
PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def read_config(path: str | Path) -> dict[str, Any]:
    """config.json of an HF directory, as a dict (one-line error otherwise)."""
    p = Path(path) / "config.json"
    try:
        cfg = json.loads(p.read_text())
    except FileNotFoundError:
        raise UserError("no config.json: not a Hugging Face model directory", path=path) from None
    except (OSError, ValueError) as exc:
        raise UserError(f"not JSON ({exc})", path=p) from None
    if not isinstance(cfg, dict):
        raise UserError("not a JSON object", path=p)
    return cfg


def config_dtype(cfg: dict[str, Any]) -> str:
    """The dtype a config says the weights are in (``dtype``, transformers 4's ``torch_dtype``;
    float32 when it says nothing), as torch names it: "bfloat16"."""
    d = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return str(d).replace("torch.", "")


def check(
    path: str | Path,
    *,
    field: str | None = None,
    weights: bool = True,
    tokenizer: bool = True,
    chat_template: bool = False,
    where: str | None = None,
) -> dict[str, Any]:
    """Raise one UserError line unless ``path`` is an HF model directory with config.json and,
    as asked, safetensors weights, a tokenizer and a chat template; return its config.

    ``where`` names the file the path came from (a config file): the error then reads
    ``<where>: <field>: <path> ...`` instead of ``<path>: <field>: ...``."""

    def fail(msg: str) -> UserError:
        if where is not None:
            return UserError(f"{path} {msg}", path=where, field=field)
        return UserError(msg, path=path, field=field)

    p = Path(path)
    if not p.exists():
        raise fail("does not exist; give a local Hugging Face model directory")
    if not p.is_dir():
        raise fail("is not a directory; give a local Hugging Face model directory")
    if not (p / "config.json").is_file():
        raise fail("has no config.json; is it a Hugging Face model directory?")
    try:
        cfg = read_config(p)
    except UserError as exc:
        raise fail(f"has an unreadable config.json ({exc})") from None
    if tokenizer and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise fail(f"has no tokenizer ({' / '.join(TOKENIZER_FILES)}); copy the tokenizer files in")
    if weights and not any(p.glob("*.safetensors")):
        pickled = any(any(p.glob(g)) for g in PICKLED)
        raise fail(
            "holds only pickled .bin/.pt weights, which are never unpickled; convert them to "
            "safetensors"
            if pickled
            else "has no *.safetensors weights"
        )
    if chat_template and not has_chat_template(p):
        raise fail(
            "has no chat template (tokenizer_config.json chat_template or chat_template.jinja); "
            "add one, the service renders chat requests with it"
        )
    return cfg


def has_chat_template(path: str | Path) -> bool:
    p = Path(path)
    if (p / "chat_template.jinja").is_file():
        return True
    try:
        tcfg = json.loads((p / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(tcfg, dict) and bool(tcfg.get("chat_template"))


def num_layers(path: str | Path) -> int | None:
    """num_hidden_layers of the directory's config, or None when it cannot be read."""
    try:
        n = read_config(path).get("num_hidden_layers")
    except UserError:
        return None
    return n if isinstance(n, int) else None


def check_tokenizer(path: str | Path, *, field: str | None = None) -> None:
    """Raise one UserError line unless ``path`` holds the tokenizer files a served model needs
    (without them a model directory made from it cannot be served): tokenizer_config.json, a
    tokenizer (``TOKENIZER_FILES``; vocab.json with merges.txt), and JSON files that parse."""
    p = Path(path)
    if not p.is_dir():
        raise UserError("not a directory", path=p, field=field)
    if not (p / "tokenizer_config.json").is_file():
        raise UserError(
            "missing tokenizer_config.json; a model directory made from it cannot be served",
            path=p,
            field=field,
        )
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(
            f"no tokenizer ({' / '.join(TOKENIZER_FILES)}); a model directory made from it "
            "cannot be served",
            path=p,
            field=field,
        )
    if (p / "vocab.json").is_file() and not (p / "tokenizer.json").is_file():
        if not (p / "merges.txt").is_file():
            raise UserError(
                "vocab.json without merges.txt (or tokenizer.json)", path=p, field=field
            )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        f = p / name
        if f.is_file():
            try:
                json.loads(f.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise UserError(f"invalid JSON ({exc})", path=f, field=field) from None


def copy_companions(source: str | Path, out: str | Path) -> list[str]:
    """Copy the ``COMPANION_FILES`` that ``source`` has into ``out``; the names copied."""
    copied = []
    for name in COMPANION_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, Path(out) / name)
            copied.append(name)
    return copied
