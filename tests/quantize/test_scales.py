"""Scale files: round trip, checks against a model, and function-preserving folding."""

from __future__ import annotations

import pytest

from llmbuild.errors import UserError

pytestmark = pytest.mark.unit
torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from llmbuild.quantize import scales as sc  # noqa: E402


class _Norm(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.weight = torch.nn.Parameter(0.5 + torch.rand(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = _Norm(16)
        self.q = torch.nn.Linear(16, 8, bias=False)
        self.k = torch.nn.Linear(16, 4, bias=True)

    def forward(self, x):
        h = self.norm(x)
        return torch.cat([self.q(h), self.k(h)], -1)


def _scales(strength=0.5):
    return sc.SmoothingScales(
        strength=strength,
        scales={"norm": 0.25 + 4 * torch.rand(16)},
        balance={"norm": ["q", "k"]},
        extra={"architecture": "_Block"},
    )


def test_round_trip(tmp_path):
    s = _scales(0.7)
    p = tmp_path / "s.safetensors"
    p.write_bytes(s.to_bytes())
    back = sc.load(p)
    assert back.strength == 0.7
    assert back.balance == {"norm": ["q", "k"]}
    assert back.extra["architecture"] == "_Block"
    torch.testing.assert_close(back.scales["norm"], s.scales["norm"], rtol=0, atol=0)


def test_apply_preserves_function_and_moves_range():
    torch.manual_seed(0)
    m = _Block()
    x = torch.randn(5, 16) * torch.linspace(0.1, 20, 16)  # outlier channels
    before = m(x)
    s = _scales()
    w_norm = m.norm.weight.detach().clone()
    sc.check_against(m, s, "s.safetensors")
    sc.apply(m, s)
    torch.testing.assert_close(m(x), before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.norm.weight.detach(), w_norm / s.scales["norm"])


def test_load_rejects_foreign_file(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(2)}, str(p))
    with pytest.raises(UserError, match="format: format None, expected"):
        sc.load(p)
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="--scale-input: not a safetensors scale file"):
        sc.load(bad)


def test_check_against_wrong_model():
    m = _Block()
    wrong_width = sc.SmoothingScales(
        strength=0.5, scales={"norm": torch.ones(8)}, balance={"norm": ["q"]}
    )
    with pytest.raises(UserError, match="norm: 8 scales for a layer of width 16"):
        sc.check_against(m, wrong_width, "s.safetensors")
    missing = sc.SmoothingScales(
        strength=0.5,
        scales={"model.layers.0.ln": torch.ones(16)},
        balance={"model.layers.0.ln": ["q"]},
    )
    with pytest.raises(UserError, match="made for another architecture"):
        sc.check_against(m, missing, "s.safetensors")


def test_file_bytes_are_a_function_of_the_content(tmp_path):
    """The same scales give the same bytes whatever order the metadata came in (the audit
    rebuilds the scale file byte for byte), and safetensors reads them as written."""
    from safetensors import safe_open

    s = _scales(0.5)
    other = sc.SmoothingScales(
        strength=0.5,
        scales=dict(reversed(list(s.scales.items()))),
        balance=s.balance,
        extra=dict(reversed(list({"b": "2", "a": "1", **s.extra}.items()))),
    )
    s.extra = {"a": "1", "b": "2", **s.extra}
    assert s.to_bytes() == other.to_bytes()
    p = tmp_path / "s.safetensors"
    p.write_bytes(s.to_bytes())
    with safe_open(str(p), framework="pt") as fh:
        assert fh.metadata()["smoothing_strength"] == "0.5"
        torch.testing.assert_close(fh.get_tensor("norm"), s.scales["norm"], rtol=0, atol=0)
