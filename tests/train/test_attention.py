"""The fused core attention (llmbuild.mcore.attention.SdpaAttention) against megatron-core's own
DotProductAttention: the same outputs and gradients for the masks training builds (causal,
packed sequences), with grouped query heads, and megatron's forward where the fused one would
differ (a row with nothing to attend to, attention dropout while training); the lean rotary
embedding against megatron's, bit for bit."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

S, B, HEADS, DIM = 24, 3, 4, 16


@pytest.fixture(scope="module")
def backend():
    import warnings

    from llmbuild.mcore import device

    warnings.filterwarnings("ignore", category=UserWarning)
    yield device.init_backend("cpu", tp=1, pp=1, seed=1)
    device.shutdown()


def _config(groups: int, dropout: float = 0.0):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=1,
        hidden_size=HEADS * DIM,
        num_attention_heads=HEADS,
        num_query_groups=groups,
        kv_channels=DIM,
        attention_dropout=dropout,
        attention_softmax_in_fp32=True,
        masked_softmax_fusion=False,
        use_cpu_initialization=True,
    )


def _pair(groups: int, dropout: float = 0.0):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from llmbuild.mcore.attention import SdpaAttention

    cfg = _config(groups, dropout)
    args = dict(layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    return DotProductAttention(cfg, **args), SdpaAttention(cfg, **args)


def _qkv(groups: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(S, B, HEADS, DIM, generator=g)
    k = torch.randn(S, B, groups, DIM, generator=g)
    v = torch.randn(S, B, groups, DIM, generator=g)
    return q, k, v


def _run(module, q, k, v, mask):
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = module(q, k, v, mask)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    return out.detach(), [t.grad for t in (q, k, v)]


def _causal():
    from llmbuild.mcore.model import causal_attention_mask

    return causal_attention_mask(S)


def _packed():
    from llmbuild.train.data import packed_attention_mask

    segments = torch.tensor([[1] * 10 + [2] * 14, [1] * 24, [1] * 5 + [2] * 7 + [3] * 9 + [0] * 3])
    return packed_attention_mask(segments)


@pytest.mark.parametrize("groups", [HEADS, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("mask", [_causal, _packed], ids=["causal", "packed"])
def test_fused_attention_matches_megatrons(backend, groups, mask):
    ref, fused = _pair(groups)
    q, k, v = _qkv(groups)
    m = mask()
    want, want_grads = _run(ref, q, k, v, m)
    got, got_grads = _run(fused, q, k, v, m)
    assert fused.fused_calls == 1
    assert got.shape == (S, B, HEADS * DIM)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_a_row_with_nothing_to_attend_to_takes_megatrons_forward(backend):
    ref, fused = _pair(HEADS)
    q, k, v = _qkv(HEADS, seed=1)
    m = _causal().clone()
    m[..., 3, :] = True  # query 3 may attend to nothing: megatron's softmax is uniform there
    want, _ = _run(ref, q, k, v, m)
    got, _ = _run(fused, q, k, v, m)
    assert fused.fused_calls == 0
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


def test_attention_dropout_while_training_takes_megatrons_forward(backend):
    _, fused = _pair(HEADS, dropout=0.1)
    q, k, v = _qkv(HEADS, seed=2)
    fused.train()
    _run(fused, q, k, v, _causal())
    assert fused.fused_calls == 0
    fused.eval()  # no dropout at evaluation: fused
    with torch.no_grad():
        fused(q, k, v, _causal())
    assert fused.fused_calls == 1


def test_the_models_layers_use_it(backend):
    from llmbuild.mcore import model as M
    from llmbuild.mcore.attention import SdpaAttention

    hf = dict(
        vocab_size=256,
        hidden_size=HEADS * DIM,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
    )
    args = M.describe(hf, "llama")
    gpt = M.build_gpt_model(args, M.transformer_config(args))
    layers = [m for m in gpt.modules() if type(m).__name__ == "SelfAttention"]
    assert layers and all(isinstance(m.core_attention, SdpaAttention) for m in layers)


@pytest.mark.parametrize(
    ("rot", "interleaved"),
    [(DIM, False), (DIM // 2, False), (DIM, True)],
    ids=["full", "partial", "interleaved"],
)
def test_lean_rotary_embedding_gives_megatrons_bits(rot, interleaved):
    from llmbuild.mcore import attention as A

    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(S, B, 2, 3 * DIM, generator=g)
    t = qkv[..., DIM : 2 * DIM]  # a strided view, as megatron splits its fused projection
    freqs = torch.randn(S, 1, 1, rot, generator=g)
    grads = []
    for fn in (A._MEGATRON_ROPE_BSHD, A._lean_rope_bshd):
        x = t.detach().clone().requires_grad_(True)
        out = fn(x, freqs, rotary_interleaved=interleaved, mscale=1.5)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((out.detach(), x.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_the_model_uses_the_lean_rotary_embedding(backend):
    from megatron.core.models.common.embeddings import rope_utils

    from llmbuild.mcore import attention as A
    from llmbuild.mcore import model as M

    M.layer_spec(None)
    assert rope_utils._apply_rotary_pos_emb_bshd is A._lean_rope_bshd
