"""HF -> megatron-core -> HF on tiny random models: bit-identical weights, matching logits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

pytestmark = pytest.mark.parity

ARCHS = {
    "llama": dict(arch="llama", layers=2),
    "qwen2-tied": dict(arch="qwen2", layers=2, tied=True),
    "mistral-window": dict(arch="mistral", layers=2, sliding_window=16),
}


@pytest.fixture(scope="module")
def backend():
    import warnings

    from llmbuild.mcore import device

    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(2)
    yield device.init_backend("cpu", tp=1, pp=1, seed=1)
    device.shutdown()


def _hf_weights(hf_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(hf_dir / "model.safetensors"))


def _megatron_logits(mg_dir: Path, ids):
    from llmbuild.mcore import checkpoint as ckpt
    from llmbuild.mcore import model as M

    desc = M.load_description(mg_dir)
    _, model = M.build_for_this_rank(desc, tp=1, pp=1, device="cpu")
    ckpt.load(mg_dir, model)
    model.eval()
    seq = ids.shape[1]
    pos = torch.arange(seq).unsqueeze(0).expand(ids.shape[0], -1)
    with torch.no_grad():
        out = model(ids, pos, M.causal_attention_mask(seq))
    return out[..., : desc.args.vocab_size]


@pytest.mark.parametrize("name", list(ARCHS))
def test_roundtrip_bit_identical_and_logits_match(name, backend, tmp_path):
    from llmbuild.convert import checkpointer as C

    spec = dict(ARCHS[name])
    hf_model = tiny.make_model(tmp_path / "hf", **spec)
    stats = C.hf_to_megatron(tmp_path / "hf", tmp_path / "mg", tp=1, pp=1, device="cpu")
    assert stats.architecture == spec["arch"]
    assert (tmp_path / "mg" / "iter_0000000" / "metadata.json").is_file()
    assert (tmp_path / "mg" / "latest_checkpointed_iteration.txt").read_text().strip() == "0"

    _, back = C.megatron_to_hf_tensors(tmp_path / "mg")
    orig = _hf_weights(tmp_path / "hf")
    if spec.get("tied"):
        orig.pop("lm_head.weight", None)
    assert set(back) == set(orig)
    for k, t in orig.items():
        assert back[k].dtype == t.dtype and torch.equal(back[k], t), k

    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf_model(ids).logits
    got = _megatron_logits(tmp_path / "mg", ids)
    assert got.shape == ref.shape
    diff = (got - ref).abs().max().item()
    assert diff <= 1e-5, diff


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "llmbuild", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_cli_roundtrip_complete_hf_dir(tmp_path):
    tiny.make_model(tmp_path / "hf", arch="llama", layers=2)
    r = _cli(
        "convert",
        "hf2mg",
        "--hf",
        str(tmp_path / "hf"),
        "--output",
        str(tmp_path / "mg"),
        "--tp",
        "1",
        "--pp",
        "1",
        "--device",
        "cpu",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    desc = json.loads((tmp_path / "mg" / "llmbuild_model.json").read_text())
    assert desc["megatron"]["num_query_groups"] == 2 and desc["hf_config"]["vocab_size"] == 512
    assert (tmp_path / "mg" / "provenance.json").is_file()

    r = _cli(
        "convert",
        "mg2hf",
        "--load",
        str(tmp_path / "mg"),
        "--hf-source",
        str(tmp_path / "hf"),
        "--output",
        str(tmp_path / "out"),
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "model.safetensors",
        "provenance.json",
    ):
        assert (out / name).is_file(), name
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    a, b = _hf_weights(tmp_path / "hf"), _hf_weights(out)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.num_key_value_heads == 2
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    ).endswith("<|assistant|>\n")


def test_cli_unknown_architecture_one_line(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(
        json.dumps({"architectures": ["FalconForCausalLM"], "model_type": "falcon"})
    )
    r = _cli("convert", "hf2mg", "--hf", str(hf), "--output", str(tmp_path / "mg"))
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "FalconForCausalLM" in lines[0] and "LlamaForCausalLM" in lines[0]
    assert not (tmp_path / "mg").exists()
