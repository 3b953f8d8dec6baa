"""The parity gate's inputs, checked before anything heavy is imported: the checkpoint's
description and tracker, the HF config and every safetensors header, and that the two
describe the same model (one UserError naming the field that differs)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmbuild.errors import UserError

if TYPE_CHECKING:
    from llmbuild.mcore.model import ModelDescription

SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
# Directory names that say nothing about the model; the subject then uses the parent's name.
GENERIC_NAMES = ("mcore", "megatron", "mg", "hf", "checkpoint", "model")
# Architecture fields the HF config and the checkpoint's description must agree on.
COMPARED = (
    "architecture",
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "vocab_size",
    "add_qkv_bias",
    "tie_word_embeddings",
)


def subject_of(mcore: str | Path, direction: str) -> str:
    """ "<model dir name> <direction>"; a generic name (results/<model>/base/mcore) gives way
    to its parent's ("base hf2mg")."""
    p = Path(os.path.abspath(mcore))
    name = p.parent.name if p.name in GENERIC_NAMES and p.parent.name else p.name
    return f"{name} {direction}"


@dataclass
class Inputs:
    """Both sides, checked before anything heavy is imported."""

    desc: ModelDescription
    iteration: int
    hf_architecture: str
    hf_dtype: str  # of the safetensors (the most common among the tensors)


def check_inputs(hf: str | Path, mcore: str | Path) -> Inputs:
    """The checkpoint's description and tracker, the HF config and every safetensors header
    (tensor names and shapes against the config); the two must describe the same model (one
    UserError naming the field that differs)."""
    from collections import Counter

    from llmbuild.convert import checkpointer as C
    from llmbuild.convert.formats.torch_dist_reader import TorchDistReader
    from llmbuild.mcore import checkpoint as ckpt
    from llmbuild.mcore import model as M

    for flag, d in (("--hf", hf), ("--mcore", mcore)):
        if not Path(d).is_dir():
            raise UserError("not a directory", path=d, field=flag)
    desc = M.load_description(mcore)
    iteration, iter_dir = ckpt.latest_dir(mcore)
    TorchDistReader(iter_dir).close()  # .metadata readable, every file there and whole
    src = C.open_hf(
        hf, tp=1, pp=1, make_vocab_size_divisible_by=desc.args.make_vocab_size_divisible_by
    )
    dtypes = Counter(i.dtype for i in src.weights.infos.values())
    src.weights.close()
    for name in COMPARED:
        mine, theirs = getattr(src.args, name), getattr(desc.args, name)
        if mine != theirs:
            raise UserError(
                f"{mine!r} here but {theirs!r} in {Path(mcore) / M.DESCRIPTION_FILE}: --hf and "
                "--mcore are not the same model",
                path=Path(hf) / "config.json",
                field=name,
            )
    stored = dtypes.most_common(1)[0][0] if dtypes else "F32"
    if stored not in SAFETENSORS_DTYPES:
        raise UserError(
            f"weights stored as {stored}; parity compares float32, bfloat16 or float16 models",
            path=hf,
        )
    return Inputs(desc, iteration, src.spec.name, SAFETENSORS_DTYPES[stored])
