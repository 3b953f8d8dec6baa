"""Core attention through torch's scaled_dot_product_attention, for megatron-core's local spec,
and its rotary embedding without the copies it makes when it rotates every channel.

megatron-core's local layer spec (no Transformer Engine) computes attention unfused: a baddbmm
for the scores, a masked softmax, a bmm for the context, each materialising [b, np, s, s]
tensors and their gradients. ``SdpaAttention`` is that module (same constructor, same
parameters: none, so checkpoints do not change) with its forward done by
``torch.nn.functional.scaled_dot_product_attention``, which picks a fused kernel on CPU and
CUDA. It takes over only where the two compute the same thing: a vanilla softmax, no sliding
window, no attention bias or packed-sequence parameters, no attention dropout while training,
no query-key layer scaling, and a boolean mask (True = masked, megatron's convention) in which
every query may attend to something; anything else goes to megatron's own forward.

``use_lean_rope`` swaps megatron's ``_apply_rotary_pos_emb_bshd`` for one that, when the
rotation covers every channel of a head (rotary_percent 1, not interleaved, not MLA), skips
slicing off and concatenating back an empty pass-through part: the same arithmetic in the same
order (so the same bits), two full-size copies fewer per call, forward and backward.
"""

from __future__ import annotations

import weakref
from typing import Any

from megatron.core.models.common.embeddings import rope_utils
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

_MEGATRON_ROPE_BSHD = rope_utils._apply_rotary_pos_emb_bshd


def _lean_rope_bshd(
    t: Any,
    freqs: Any,
    rotary_interleaved: bool = False,
    multi_latent_attention: bool = False,
    mscale: float = 1.0,
) -> Any:
    """megatron's _apply_rotary_pos_emb_bshd without the empty pass-through part's copies."""
    import torch

    if rotary_interleaved or multi_latent_attention or freqs.shape[-1] != t.shape[-1]:
        return _MEGATRON_ROPE_BSHD(t, freqs, rotary_interleaved, multi_latent_attention, mscale)
    cos_ = (torch.cos(freqs) * mscale).to(t.dtype)
    sin_ = (torch.sin(freqs) * mscale).to(t.dtype)
    x1, x2 = torch.chunk(t, 2, dim=-1)
    return (t * cos_) + (torch.cat((-x2, x1), dim=-1) * sin_)


def use_lean_rope() -> None:
    """Route megatron's rotary embedding (bshd layout) through ``_lean_rope_bshd``."""
    rope_utils._apply_rotary_pos_emb_bshd = _lean_rope_bshd


# The mask of the last forward and what it gives SDPA: every layer of a forward gets the same
# mask tensor, so it is inverted and checked once (the check reads the tensor: on CUDA a sync)
_LAST_MASK: tuple[Any, int, Any] | None = None


def _sdpa_mask(attention_mask: Any) -> Any:
    """SDPA's boolean mask (True = attend) for megatron's (True = masked), or None when some
    query may attend to nothing (NaN in SDPA, uniform in megatron's softmax)."""
    global _LAST_MASK
    last = _LAST_MASK
    if last is not None and last[0]() is attention_mask and last[1] == attention_mask._version:
        return last[2]
    attend = ~attention_mask
    attend = attend if bool(attend.any(dim=-1).all()) else None
    _LAST_MASK = (weakref.ref(attention_mask), attention_mask._version, attend)
    return attend


class SdpaAttention(DotProductAttention):
    """megatron's DotProductAttention with a fused forward (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg = self.config
        self._fused_ok = (
            self.softmax_offset is None
            and self.scale_mask_softmax.window_size is None
            and not cfg.apply_query_key_layer_scaling
        )
        self.fused_calls = 0  # how many forwards took the fused path (tests read it)

    def forward(
        self,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Any = None,
        packed_seq_params: Any = None,
    ) -> Any:
        import torch
        import torch.nn.functional as F

        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        dropout = self.attention_dropout.p if self.training else 0.0
        usable = (
            self._fused_ok
            and attention_bias is None
            and packed_seq_params is None
            and dropout == 0.0
            and (attention_mask is None or attention_mask.dtype == torch.bool)
        )
        attend = None
        if usable and attention_mask is not None:
            attend = _sdpa_mask(attention_mask)
            usable = attend is not None
        elif usable and not (mask_type == AttnMaskType.causal and query.size(0) == key.size(0)):
            usable = False  # no mask and not plain causal: let megatron decide
        if not usable:
            return super().forward(
                query,
                key,
                value,
                attention_mask,
                attn_mask_type=attn_mask_type,
                attention_bias=attention_bias,
                packed_seq_params=packed_seq_params,
            )
        self.fused_calls += 1
        sq, b, heads, dim = query.shape
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attend,
            is_causal=attend is None,
            scale=self.softmax_scale,
            enable_gqa=k.size(1) != heads,
        )
        # [b, n, s, d] -> [s, b, n * d]
        return context.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)
