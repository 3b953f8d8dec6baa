"""Key maps, QKV interleave, gate/up fusion, vocab padding, TP regions: the weight combinations
(``weights``) the key maps name, and the pure functions they are made of."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llmbuild.convert import registry as R  # noqa: E402
from llmbuild.convert import weights as W  # noqa: E402
from llmbuild.convert.archs import llama  # noqa: E402
from llmbuild.errors import UserError  # noqa: E402
from llmbuild.mcore import description as M  # noqa: E402

pytestmark = pytest.mark.unit

LLAMA_CFG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 500,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "tie_word_embeddings": False,
    "hidden_act": "silu",
}


def _args(cfg=None, **kw):
    cfg = dict(LLAMA_CFG, **(cfg or {}))
    spec = R.find_arch(cfg)
    return spec, M.describe(cfg, spec.name, qkv_bias=spec.qkv_bias, **kw)


def test_qkv_interleave_layout_by_hand():
    # 4 query heads, 2 groups, head_dim 1: rows are labelled by head.
    q = torch.tensor([[10.0], [11.0], [12.0], [13.0]])
    k = torch.tensor([[20.0], [21.0]])
    v = torch.tensor([[30.0], [31.0]])
    fused = W.fuse_qkv(q, k, v, num_heads=4, num_groups=2, head_dim=1)
    assert fused.flatten().tolist() == [10, 11, 20, 30, 12, 13, 21, 31]
    back = W.split_qkv(fused, num_heads=4, num_groups=2, head_dim=1)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v), strict=True))


@pytest.mark.parametrize(("heads", "groups", "head_dim"), [(4, 2, 8), (8, 8, 4), (6, 1, 2)])
def test_qkv_roundtrip_weights_and_bias(heads, groups, head_dim):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(heads * head_dim, 16, generator=g)
    k = torch.randn(groups * head_dim, 16, generator=g)
    v = torch.randn(groups * head_dim, 16, generator=g)
    fused = W.fuse_qkv(q, k, v, num_heads=heads, num_groups=groups, head_dim=head_dim)
    assert fused.shape == ((heads + 2 * groups) * head_dim, 16)
    for a, b in zip(
        W.split_qkv(fused, num_heads=heads, num_groups=groups, head_dim=head_dim),
        (q, k, v),
        strict=True,
    ):
        assert torch.equal(a, b)
    qb, kb, vb = q[:, 0], k[:, 0], v[:, 0]
    fb = W.fuse_qkv(qb, kb, vb, num_heads=heads, num_groups=groups, head_dim=head_dim)
    assert torch.equal(fb, fused[:, 0])


def test_gate_up_and_vocab_padding():
    gate, up = torch.randn(6, 4), torch.randn(6, 4)
    fc1 = W.fuse_gate_up(gate, up)
    assert torch.equal(fc1[:6], gate) and torch.equal(fc1[6:], up)
    g2, u2 = W.split_gate_up(fc1)
    assert torch.equal(g2, gate) and torch.equal(u2, up)
    emb = torch.randn(5, 3)
    padded = W.pad_vocab(emb, 8)
    assert padded.shape == (8, 3) and torch.equal(padded[5:], torch.zeros(3, 3))
    assert torch.equal(W.unpad_vocab(padded, 5), emb)


ALL = [W.COLUMN, W.ROW, W.QKV, W.GATE_UP, W.VOCAB, W.REPLICATED]


def _tp_shard(t, how, rank: int, size: int):
    """A tensor-parallel rank's part of a global tensor, as megatron's layers hold it (the
    reference the stored regions are checked against)."""
    if size == 1 or how is W.REPLICATED:
        return t
    if how is W.ROW:
        return t.chunk(size, dim=1)[rank]
    if how is W.GATE_UP:
        gate, up = t.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)
    return t.chunk(size, dim=0)[rank]  # column, vocabulary, QKV (whole groups per rank)


@pytest.mark.parametrize("how", ALL)
def test_tp_regions_tile_the_tensor_once(how):
    t = torch.zeros(8, 6)
    for r, reg in how.regions(tuple(t.shape), 2):
        assert r in (0, 1)
        t[tuple(slice(s, s + n) for s, n in reg)] += 1
    assert torch.equal(t, torch.ones(8, 6))


def test_tp_regions_swiglu_take_half_of_each():
    gate, up = torch.zeros(4, 2), torch.ones(4, 2)
    fc1 = W.fuse_gate_up(gate, up)
    parts = [fc1[tuple(slice(s, s + n) for s, n in reg)] for r, reg in W.GATE_UP.regions((8, 2), 2)
             if r == 1]  # fmt: skip
    part = torch.cat(parts)
    assert part.shape == (4, 2) and part[:2].sum() == 0 and part[2:].sum() == 4


def test_llama_key_map_literal_and_inverse():
    spec, args = _args()
    table = R.key_table(spec, args)
    assert table["decoder.layers.2.self_attention.linear_qkv.weight"][1] == (
        "model.layers.2.self_attn.q_proj.weight",
        "model.layers.2.self_attn.k_proj.weight",
        "model.layers.2.self_attn.v_proj.weight",
    )
    assert table["decoder.layers.0.mlp.linear_fc1.weight"][1] == (
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.0.mlp.up_proj.weight",
    )
    assert len(table) == 2 + 3 * 6 + 1  # embedding, output, 6 per layer, final norm
    hf_keys = R.hf_keys(spec, args)
    assert len(hf_keys) == len(set(hf_keys)) == 2 + 3 * 9 + 1


def _random_hf(spec, args):
    g = torch.Generator().manual_seed(1)
    hd, h = args.kv_channels, args.hidden_size
    shapes = {
        "q_proj.weight": (args.num_attention_heads * hd, h),
        "k_proj.weight": (args.num_query_groups * hd, h),
        "v_proj.weight": (args.num_query_groups * hd, h),
        "q_proj.bias": (args.num_attention_heads * hd,),
        "k_proj.bias": (args.num_query_groups * hd,),
        "v_proj.bias": (args.num_query_groups * hd,),
        "o_proj.weight": (h, args.num_attention_heads * hd),
        "gate_proj.weight": (args.ffn_hidden_size, h),
        "up_proj.weight": (args.ffn_hidden_size, h),
        "down_proj.weight": (h, args.ffn_hidden_size),
    }
    out = {}
    for key in R.hf_keys(spec, args):
        suffix = ".".join(key.split(".")[-2:])
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            shape = (args.vocab_size, h)
        elif suffix in shapes:
            shape = shapes[suffix]
        else:
            shape = (h,)
        out[key] = torch.randn(*shape, generator=g)
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": True},
        {"architectures": ["MistralForCausalLM"]},
    ],
)
def test_hf_to_mcore_to_hf_is_identity(cfg):
    spec, args = _args(cfg)
    hf = _random_hf(spec, args)
    table = R.key_table(spec, args)
    mg = {key: rule.how.combine([hf[k] for k in keys], args) for key, (rule, keys) in table.items()}
    assert mg["embedding.word_embeddings.weight"].shape[0] == args.padded_vocab_size == 512
    assert ("output_layer.weight" in mg) == (not args.tie_word_embeddings)
    assert ("decoder.layers.0.self_attention.linear_qkv.bias" in mg) == spec.qkv_bias
    back = {
        name: t
        for key, (rule, keys) in table.items()
        for name, t in zip(keys, rule.how.split(mg[key], args), strict=True)
    }
    assert set(back) == set(hf)
    assert all(torch.equal(back[k], hf[k]) for k in hf)


def test_unexpected_keys_are_reported():
    spec, args = _args()
    keys = R.hf_keys(spec, args) + [
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "model.layers.0.self_attn.q_proj.bias",
    ]
    assert R.unexpected_hf_keys(keys, spec, args) == ["model.layers.0.self_attn.q_proj.bias"]


def test_unknown_architecture_is_one_line_naming_it():
    with pytest.raises(UserError) as exc:
        R.find_arch({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"})
    msg = str(exc.value)
    assert "GPTNeoXForCausalLM" in msg and "LlamaForCausalLM" in msg and "\n" not in msg


def test_describe_derives_megatron_args():
    _, args = _args(tp=4)
    assert (args.num_query_groups, args.kv_channels, args.ffn_hidden_size) == (2, 16, 96)
    assert args.padded_vocab_size == 512  # 500 up to a multiple of 128 * 4
    assert args.rotary_base == 10000.0 and args.window_size is None
    _, v4 = _args(
        {
            "rope_parameters": None,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        }
    )
    assert v4.rotary_base == 500000.0 and v4.rope_scaling and v4.rope_scaling_factor == 32.0
    _, lin = _args({"rope_parameters": {"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0}})
    assert lin.seq_len_interpolation_factor == 2.0
    with pytest.raises(UserError, match="yarn"):
        _args({"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn", "factor": 2.0}})
    _, sw = _args({"architectures": ["MistralForCausalLM"], "sliding_window": 64})
    assert sw.window_size == (63, 0)


def test_parallel_checks():
    _, args = _args()
    args.check_parallel(2, 3)
    with pytest.raises(UserError, match="--tp"):
        args.check_parallel(4, 1)  # 2 kv heads
    with pytest.raises(UserError, match="--pp"):
        args.check_parallel(1, 2)  # 3 layers


def test_description_json_roundtrip():
    _, args = _args()
    desc = M.ModelDescription(hf_config=LLAMA_CFG, args=args, tp=2, pp=1)
    again = M.ModelDescription.from_json(desc.to_json())
    assert again.args == args and again.tp == 2 and again.hf_config == LLAMA_CFG


@pytest.mark.parametrize(
    "cfg", [{}, {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}]
)
def test_megatron_shapes_are_what_combine_makes(cfg):
    spec, args = _args(cfg, tp=2)
    shapes = R.megatron_shapes(spec, args)
    assert shapes["embedding.word_embeddings.weight"] == (512, 64)  # 500 padded to 128*2
    for key, (rule, keys) in R.key_table(spec, args).items():
        parts = [torch.zeros(spec.hf_shape(k, args)) for k in keys]
        assert tuple(rule.how.combine(parts, args).shape) == shapes[key], key


def test_yi_reads_as_llama_and_is_written_as_llama():
    spec = R.find_arch({"architectures": ["YiForCausalLM"], "model_type": "Yi"})
    assert spec.key_map is llama.KEY_MAP and spec.write_as == ("LlamaForCausalLM", "llama")
    assert R.find_arch({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).name == (
        "llama"
    )


def test_sharded_keys_of_the_local_spec():
    from llmbuild.convert.formats import torch_dist as TD

    assert TD.sharded_key("decoder.layers.3.input_layernorm.weight") == (
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
        3,
    )
    assert TD.sharded_key("decoder.layers.0.pre_mlp_layernorm.weight") == (
        "decoder.layers.mlp.linear_fc1.layer_norm_weight",
        0,
    )
    assert TD.sharded_key("decoder.layers.12.mlp.linear_fc2.weight") == (
        "decoder.layers.mlp.linear_fc2.weight",
        12,
    )
    assert TD.sharded_key("output_layer.weight") == ("output_layer.weight", None)


@pytest.mark.parametrize("how", ALL)
def test_stored_chunks_are_each_ranks_shard(how):
    """The regions torch_dist stores per rank are exactly what a rank holds."""
    t = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6)
    for tp in (1, 2):
        for rank in range(tp):
            regions = [reg for r, reg in how.regions(tuple(t.shape), tp) if r == rank]
            if how is W.REPLICATED and rank > 0:
                assert regions == []  # a replica: tensor-parallel rank 0 stores it
                continue
            parts = [t[tuple(slice(s, s + n) for s, n in reg)] for reg in regions]
            assert torch.equal(torch.cat(parts, dim=0), _tp_shard(t, how, rank, tp)), (tp, rank)


def test_layout_places_layers_by_the_pipeline_split():
    """The chunks' writing ranks follow llmbuild.parallel's split (the one rule)."""
    from llmbuild.convert.formats import torch_dist as TD

    spec, args = _args({"num_hidden_layers": 5})
    table = R.key_table(spec, args)
    shapes = R.megatron_shapes(spec, args)
    splits = {key: rule.how for key, (rule, _) in table.items()}

    def ranks(pp, pp_layers=None):
        lay = TD.layout(splits, shapes, num_layers=5, tp=1, pp=pp, pp_layers=pp_layers)
        return [c.rank for c in lay.chunks if c.fqn == TD.PROBE]

    assert ranks(2, (2, 3)) == [0, 0, 1, 1, 1]
    assert ranks(1) == [0] * 5
    with pytest.raises(UserError, match="--pp-layers"):
        ranks(2, (1, 3))
    with pytest.raises(UserError, match="--pp"):
        ranks(2)  # 2 does not divide 5


def test_safetensors_streaming_writer_and_lazy_reader(tmp_path):
    from safetensors import safe_open

    from llmbuild.convert.formats import safetensors_io as S

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=g),
        "b": torch.randn(7, generator=g).to(torch.bfloat16),
        "c": torch.randn(2, 2, 2, generator=g).to(torch.float16),
        "d": torch.randn(40, generator=g),
    }
    specs = [
        S.TensorSpec(k, str(v.dtype).split(".")[1], tuple(v.shape)) for k, v in tensors.items()
    ]
    names = S.write_sharded(tmp_path, specs, iter(tensors.values()), max_shard_bytes=80)
    assert names == [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
    for name in names:  # the reference implementation reads what we wrote
        with safe_open(str(tmp_path / name), "pt") as f:
            for k in f.keys():  # noqa: SIM118
                assert torch.equal(f.get_tensor(k), tensors[k])
    lazy = S.LazyHFWeights(tmp_path)
    assert set(lazy) == set(tensors)
    assert all(torch.equal(lazy[k], v) and lazy[k].dtype == v.dtype for k, v in tensors.items())
    lazy.close()
    # a file cut short is refused before anything is read
    f = tmp_path / names[-1]
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(UserError, match="truncated"):
        S.LazyHFWeights(tmp_path)
