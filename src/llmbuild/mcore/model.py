"""HF config -> megatron-core model description -> TransformerConfig + GPTModel (local spec).

``ModelArgs`` is the architecture in megatron's terms, derived from a Hugging Face
``config.json`` by ``describe`` (a pure function). It is stored as ``llmbuild_model.json`` in
every Megatron checkpoint directory together with the HF config it came from, so training and
mg2hf need no HF directory to know the architecture.

The model uses megatron.core's local layer spec (no Transformer Engine): torch RMSNorm,
ColumnParallelLinear/RowParallelLinear, DotProductAttention.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

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

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    def check_parallel(self, tp: int, pp: int, pp_layers: tuple[int, ...] | None = None) -> None:
        """Raise a UserError if this model cannot be split ``tp`` x ``pp`` ways (``pp_layers``:
        an uneven split, layers per pipeline stage)."""
        if pp < 1 or tp < 1:
            raise UserError(f"tp={tp} and pp={pp} must be >= 1", field="--tp/--pp")
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
        if pp > self.num_layers:
            raise UserError(
                f"pp={pp} is larger than num_hidden_layers {self.num_layers}: every pipeline "
                "stage needs at least one layer",
                field="--pp",
            )
        if pp_layers is not None:
            if len(pp_layers) != pp or sum(pp_layers) != self.num_layers or min(pp_layers) < 1:
                raise UserError(
                    f"layer split {list(pp_layers)} must give each of the {pp} pipeline stages "
                    f">= 1 layer and sum to num_hidden_layers {self.num_layers}",
                    field="--pp-layers",
                )
        elif self.num_layers % pp:
            raise UserError(
                f"pp={pp} must divide num_hidden_layers {self.num_layers} (or give an uneven "
                "split with --pp-layers)",
                field="--pp",
            )

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


_DTYPES = ("float32", "bfloat16", "float16")


def pipeline_layout(pp_layers: Sequence[int]) -> list[list[str]] | None:
    """megatron-core's ``pipeline_model_parallel_layout`` for ``pp_layers`` decoder layers per
    pipeline stage (the embedding on the first stage, the loss on the last), or None for an
    even split (megatron's default). The layout places any split; megatron's
    ``num_layers_in_first/last_pipeline_stage`` only describe ones with even middle stages."""
    if len(set(pp_layers)) <= 1:
        return None
    stages = [["decoder"] * n for n in pp_layers]
    stages[0].insert(0, "embedding")
    stages[-1].append("loss")
    return stages


def transformer_config(
    args: ModelArgs,
    *,
    tp: int = 1,
    pp: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
    pp_layers: Sequence[int] | None = None,
    **overrides: Any,
):
    """megatron.core TransformerConfig for ``args`` (fusions off: they need CUDA kernels);
    ``pp_layers``: an uneven pipeline split, decoder layers per stage."""
    import torch
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r}; use one of {', '.join(_DTYPES)}", field="dtype")
    first = overrides.get("num_layers_in_first_pipeline_stage")
    last = overrides.get("num_layers_in_last_pipeline_stage")
    split = None if pp_layers is None else tuple(int(n) for n in pp_layers)
    if split is not None and (first is not None or last is not None):
        raise UserError(
            "give the uneven pipeline split once: pp_layers or "
            "num_layers_in_first/last_pipeline_stage",
            field="--pp-layers",
        )
    if pp > 1 and first is not None and last is not None:  # uneven: first, middle..., last
        rest = args.num_layers - first - last
        split = (first, *([rest // (pp - 2)] * (pp - 2) if pp > 2 else []), last)
    args.check_parallel(tp, pp, split)
    params_dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = dict(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        layernorm_epsilon=args.layernorm_epsilon,
        add_bias_linear=False,
        add_qkv_bias=args.add_qkv_bias,
        hidden_dropout=0.0,
        attention_dropout=args.attention_dropout,
        window_size=args.window_size,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        attention_softmax_in_fp32=True,
        # Fused kernels are CUDA-only; the local spec falls back to torch when they are off.
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=device == "cpu",
        # Weights always come from a checkpoint, so the random init is wasted work, except
        # that megatron-core 0.16.1 sets the tensor-parallel attributes of linear/embedding
        # weights (tensor_model_parallel, partition_dim) only inside its init functions;
        # without them TP>1 treats every shard as a duplicate (wrong grad norm).
        perform_initialization=tp > 1,
    )
    layout = pipeline_layout(split) if pp_layers is not None else None
    if layout is not None:
        kwargs["pipeline_model_parallel_layout"] = layout
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def layer_spec(args: ModelArgs):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(normalization="RMSNorm")


def build_gpt_model(
    args: ModelArgs,
    config: Any,
    *,
    pre_process: bool = True,
    post_process: bool = True,
    parallel_output: bool = True,
):
    """A GPTModel for this rank's pipeline stage (call after ``init_backend``)."""
    from megatron.core.models.gpt.gpt_model import GPTModel

    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(args),
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=parallel_output,
        share_embeddings_and_output_weights=args.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=int(args.rotary_base)
        if float(args.rotary_base).is_integer()
        else args.rotary_base,
        rope_scaling=args.rope_scaling,
        rope_scaling_factor=args.rope_scaling_factor,
        seq_len_interpolation_factor=args.seq_len_interpolation_factor,
    )


def build_for_this_rank(
    desc: ModelDescription,
    *,
    tp: int,
    pp: int,
    device: str,
    dtype: str | None = None,
    parallel_output: bool = True,
    pp_layers: Sequence[int] | None = None,
    **overrides: Any,
):
    """TransformerConfig + GPTModel for the current pipeline stage, on ``device``
    (``pp_layers``: an uneven pipeline split, decoder layers per stage)."""
    from megatron.core import parallel_state

    config = transformer_config(
        desc.args,
        tp=tp,
        pp=pp,
        dtype=dtype or desc.dtype,
        device=device,
        pp_layers=pp_layers,
        **overrides,
    )
    model = build_gpt_model(
        desc.args,
        config,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=parallel_output,
    )
    return config, model


def causal_attention_mask(seq_length: int, device: Any = "cpu"):
    """Megatron's boolean mask [1, 1, s, s], True where attention is NOT allowed."""
    import torch

    return torch.triu(
        torch.ones(seq_length, seq_length, dtype=torch.bool, device=device), diagonal=1
    ).view(1, 1, seq_length, seq_length)
