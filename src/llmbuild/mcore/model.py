"""megatron-core's model for a description: TransformerConfig + GPTModel (local spec).

The model uses megatron.core's local layer spec (no Transformer Engine): torch RMSNorm,
ColumnParallelLinear/RowParallelLinear, and megatron's DotProductAttention with its forward
through torch's fused scaled_dot_product_attention (mcore/attention.py). What the model is
comes from ``description`` (torch-free; its names are re-exported here for the callers that
build models: ``M.load_description``, ``M.ModelDescription``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmbuild import dtypes, parallel
from llmbuild.errors import UserError
from llmbuild.mcore.description import (  # noqa: F401 - re-exported
    DESCRIPTION_FILE,
    ModelArgs,
    ModelDescription,
    describe,
    load_description,
    save_description,
)


def pipeline_layout(
    pp_layers: Sequence[int], num_layers: int | None = None
) -> list[list[str]] | None:
    """megatron-core's ``pipeline_model_parallel_layout`` for ``pp_layers`` decoder layers per
    pipeline stage (the embedding on the first stage, the loss on the last), or None for an
    even split (megatron's default). The layout places any split; megatron's
    ``num_layers_in_first/last_pipeline_stage`` only describe ones with even middle stages.
    The split is checked by ``parallel.check_split`` (against ``num_layers`` when given)."""
    counts = parallel.check_split(num_layers, len(pp_layers), pp_layers)
    if len(set(counts)) <= 1:
        return None
    stages = [["decoder"] * n for n in counts]
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

    dtypes.check(dtype, field="dtype")
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
    layout = pipeline_layout(split, args.num_layers) if pp_layers is not None else None
    if layout is not None:
        kwargs["pipeline_model_parallel_layout"] = layout
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def layer_spec(args: ModelArgs):
    """megatron-core's local layer spec, its core attention fused and its rotary embedding
    lean (mcore/attention.py)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from llmbuild.mcore.attention import SdpaAttention, use_lean_rope

    use_lean_rope()
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = SdpaAttention
    return spec


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
