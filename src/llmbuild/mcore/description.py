"""HF config -> the model in megatron-core's terms, without megatron or torch.

``ModelArgs`` is the architecture in megatron's terms, derived from a Hugging Face
``config.json`` by ``describe`` (a pure function). It is stored as ``llmbuild_model.json`` in
every Megatron checkpoint directory together with the HF config it came from
(``ModelDescription``), so training and mg2hf need no HF directory to know the architecture.
Conversion reads only this; the megatron-core builders are ``model``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llmbuild import parallel
from llmbuild.errors import UserError

DESCRIPTION_FILE = "llmbuild_model.json"
DESCRIPTION_VERSION = 1


def pad_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron-LM's padding: up to a multiple of ``divisible_by * tp``."""
    multiple = divisible_by * tp
    return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass(frozen=True)
class ModelArgs:
    """The architecture in megatron-core's terms (the derived part of llmbuild_model.json)."""

    architecture: str  # registry key, e.g. "llama"
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    vocab_size: int  # the tokenizer's / HF vocabulary
    padded_vocab_size: int  # megatron's embedding rows (>= vocab_size)
    make_vocab_size_divisible_by: int
    max_position_embeddings: int
    layernorm_epsilon: float
    rotary_base: float
    add_qkv_bias: bool = False
    tie_word_embeddings: bool = False
    rope_scaling: bool = False  # llama 3.x frequency scaling
    rope_scaling_factor: float = 8.0
    seq_len_interpolation_factor: float | None = None  # "linear" rope scaling
    window_size: tuple[int, int] | None = None  # sliding window (left, right), Mistral
    attention_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "ffn_hidden_size",
            "num_attention_heads",
            "num_query_groups",
            "kv_channels",
            "vocab_size",
            "padded_vocab_size",
        ):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}", field=name)
        if self.num_attention_heads % self.num_query_groups:
            raise UserError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple "
                f"of num_key_value_heads {self.num_query_groups}",
                field="num_key_value_heads",
            )
        if self.padded_vocab_size < self.vocab_size:
            raise UserError("padded_vocab_size < vocab_size", field="padded_vocab_size")
        if self.window_size is not None and not isinstance(self.window_size, tuple):
            object.__setattr__(self, "window_size", tuple(self.window_size))

    def check_parallel(self, tp: int, pp: int, pp_layers: Sequence[int] | None = None) -> list[int]:
        """Raise a UserError if this model cannot be split ``tp`` x ``pp`` ways (``pp_layers``:
        an uneven split, layers per pipeline stage); return the layers per stage."""
        if tp < 1:
            raise UserError(f"tp={tp} must be >= 1", field="--tp")
        if self.num_query_groups % tp or self.num_attention_heads % tp:
            raise UserError(
                f"tp={tp} must divide num_attention_heads "
                f"{self.num_attention_heads} and num_key_value_heads "
                f"{self.num_query_groups}",
                field="--tp",
            )
        if self.ffn_hidden_size % tp:
            raise UserError(
                f"tp={tp} must divide intermediate_size {self.ffn_hidden_size}", field="--tp"
            )
        if self.padded_vocab_size % tp:
            raise UserError(
                f"tp={tp} must divide the padded vocabulary {self.padded_vocab_size}", field="--tp"
            )
        return parallel.check_split(self.num_layers, pp, pp_layers)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelArgs:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown model args {unknown}", field="megatron")
        return cls(**d)


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling dict or None) from either transformers 5 ``rope_parameters`` or 4's
    ``rope_theta`` + ``rope_scaling``."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = float(params["rope_theta"])
        kind = params.get("rope_type", params.get("type", "default"))
        return theta, (None if kind == "default" else dict(params, rope_type=kind))
    theta = float(hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        return theta, (None if kind == "default" else dict(scaling, rope_type=kind))
    return theta, None


# megatron-core 0.16.1 hard-codes llama-3 scaling's other constants.
_LLAMA3_FIXED = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def describe(
    hf: dict[str, Any],
    architecture: str,
    *,
    tp: int = 1,
    make_vocab_size_divisible_by: int = 128,
    qkv_bias: bool = False,
    path: object = "config.json",
) -> ModelArgs:
    """Derive megatron ModelArgs from an HF config dict (pure)."""

    def need(key: str) -> Any:
        if key not in hf:
            raise UserError(f"missing {key}", path=path, field=key)
        return hf[key]

    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(
            f"hidden_act {act!r} is not supported (SwiGLU needs 'silu')",
            path=path,
            field="hidden_act",
        )
    if hf.get("attention_bias") and not qkv_bias:
        raise UserError(
            "attention_bias=true (bias on o_proj too) is not supported",
            path=path,
            field="attention_bias",
        )
    if hf.get("mlp_bias"):
        raise UserError("mlp_bias=true is not supported", path=path, field="mlp_bias")
    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    groups = int(hf.get("num_key_value_heads") or heads)
    head_dim = int(hf.get("head_dim") or hidden // heads)
    vocab = int(need("vocab_size"))
    theta, scaling = _rope(hf)
    rope_scaling, rope_factor, interp = False, 8.0, None
    if scaling is not None:
        kind = scaling["rope_type"]
        if kind == "llama3":
            for k, v in _LLAMA3_FIXED.items():
                if float(scaling.get(k, v)) != v:
                    raise UserError(
                        f"llama3 rope scaling with {k}={scaling.get(k)} is not "
                        f"supported by megatron-core (fixed at {v})",
                        path=path,
                        field=f"rope_scaling.{k}",
                    )
            rope_scaling, rope_factor = True, float(scaling["factor"])
        elif kind == "linear":
            interp = float(scaling["factor"])
        else:
            raise UserError(
                f"rope scaling type {kind!r} is not supported (default, linear, llama3)",
                path=path,
                field="rope_scaling",
            )
    window = None
    sw = hf.get("sliding_window")
    if (
        sw
        and hf.get("use_sliding_window", True)
        and int(sw) < int(hf.get("max_position_embeddings", 0))
    ):
        window = (int(sw) - 1, 0)
    return ModelArgs(
        architecture=architecture,
        num_layers=int(need("num_hidden_layers")),
        hidden_size=hidden,
        ffn_hidden_size=int(need("intermediate_size")),
        num_attention_heads=heads,
        num_query_groups=groups,
        kv_channels=head_dim,
        vocab_size=vocab,
        padded_vocab_size=pad_vocab_size(vocab, make_vocab_size_divisible_by, tp),
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        layernorm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
        rotary_base=theta,
        add_qkv_bias=qkv_bias,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope_scaling=rope_scaling,
        rope_scaling_factor=rope_factor,
        seq_len_interpolation_factor=interp,
        window_size=window,
        attention_dropout=float(hf.get("attention_dropout", 0.0) or 0.0),
    )


@dataclass
class ModelDescription:
    """llmbuild_model.json: the HF config it came from, the derived megatron args, and the
    layout the checkpoint was written with."""

    hf_config: dict[str, Any]
    args: ModelArgs
    tp: int = 1
    pp: int = 1
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": DESCRIPTION_VERSION,
            "hf_config": self.hf_config,
            "megatron": asdict(self.args),
            "tp": self.tp,
            "pp": self.pp,
            "dtype": self.dtype,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any], path: object = DESCRIPTION_FILE) -> ModelDescription:
        if d.get("version") != DESCRIPTION_VERSION:
            raise UserError(
                f"unsupported description version {d.get('version')!r}", path=path, field="version"
            )
        try:
            return cls(
                hf_config=d["hf_config"],
                args=ModelArgs.from_dict(d["megatron"]),
                tp=int(d.get("tp", 1)),
                pp=int(d.get("pp", 1)),
                dtype=str(d.get("dtype", "float32")),
                extra=dict(d.get("extra", {})),
            )
        except KeyError as exc:
            raise UserError(f"missing {exc.args[0]}", path=path, field=str(exc.args[0])) from exc


def save_description(ckpt_dir: str | Path, desc: ModelDescription) -> Path:
    dest = Path(ckpt_dir) / DESCRIPTION_FILE
    dest.write_text(json.dumps(desc.to_json(), indent=2) + "\n")
    return dest


def load_description(ckpt_dir: str | Path) -> ModelDescription:
    src = Path(ckpt_dir) / DESCRIPTION_FILE
    if not src.is_file():
        raise UserError(
            f"no {DESCRIPTION_FILE}: not a checkpoint written by llmbuild "
            "(make it with `llmbuild convert hf2mg`)",
            path=ckpt_dir,
        )
    try:
        data = json.loads(src.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON ({exc})", path=src) from exc
    return ModelDescription.from_json(data, path=src)
