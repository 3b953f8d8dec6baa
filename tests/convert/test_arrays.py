"""The torch-free conversion path: numpy casts round as torch does, torch_record writes the
bytes torch.save writes, dcp_meta's stand-ins pickle as torch's objects, and hf2mg runs
without importing torch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from llmbuild.convert import arrays as A
from llmbuild.convert import dcp_meta as DM
from llmbuild.convert import torch_record as TR

sys.path.insert(0, str(Path(__file__).parent))
import tiny  # noqa: E402

pytestmark = pytest.mark.unit

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _bits(t: torch.Tensor) -> np.ndarray:
    return A.to_numpy(t).view(np.uint8)


def _specials() -> torch.Tensor:
    f32 = np.array(
        [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, -1e-45, 65504.0,
         65520.0, 1e-8, 6e-8, 1.00390625, 1.01171875, 1.0 + 2**-8, 1.0 + 3 * 2**-9],
        dtype=np.float32,
    )  # fmt: skip
    # every rounding case of the 16 dropped bits: ties to even, just below and above
    ties = (np.arange(1 << 12, dtype=np.uint32) << 20 | 0x8000).view(np.float32)
    below = (np.arange(1 << 12, dtype=np.uint32) << 20 | 0x7FFF).view(np.float32)
    above = (np.arange(1 << 12, dtype=np.uint32) << 20 | 0x8001).view(np.float32)
    rand = np.random.default_rng(0).standard_normal(50_000).astype(np.float32) * 100
    x = np.concatenate([f32, ties, below, above, rand])
    return torch.from_numpy(x[np.isfinite(x) | np.isinf(x)])


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_cast_rounds_bit_for_bit_as_torch(src, dst):
    x = _specials().to(src)
    want = x.to(dst)
    got = A.cast(A.to_numpy(x), A.dtype_name(dst))
    assert A.dtype_name(got) == A.dtype_name(dst)
    assert np.array_equal(got.view(np.uint8), _bits(want))


def test_cast_keeps_nan_a_nan():
    x = torch.tensor([float("nan"), -float("nan"), 1.0])
    got = A.to_torch(A.cast(A.to_numpy(x), "bfloat16"))
    assert got.dtype == torch.bfloat16
    assert torch.isnan(got[:2]).all() and got[2] == 1


def test_numpy_and_torch_views_share_bytes():
    t = torch.randn(3, 5).to(torch.bfloat16)
    a = A.to_numpy(t)
    assert a.dtype == np.uint16 and A.dtype_name(a) == "bfloat16"
    assert torch.equal(A.to_torch(a), t)


def _torch_save(obj) -> bytes:
    crc = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()
    finally:
        torch.serialization.set_crc32_options(crc)


def _before_ident(data: bytes) -> bytes:
    z = zipfile.ZipFile(io.BytesIO(data))
    return data[: z.getinfo("archive/.data/serialization_id").header_offset]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3,), (2, 3), (1, 5, 7), (300, 70000), (1, 2, 3, 4)])
def test_record_is_torch_saves_bytes(dtype, shape):
    t = torch.randn(shape).to(dtype)
    ref = _torch_save(t)
    buf = io.BytesIO()
    n = TR.write_tensor(buf, A.to_numpy(t), "name")
    mine = buf.getvalue()
    assert n == len(mine) == len(ref)
    # identical up to the serialization id (torch draws it at random; ours is derived)
    assert _before_ident(mine) == _before_ident(ref)
    back = torch.load(io.BytesIO(mine), weights_only=True)
    assert back.dtype == dtype and torch.equal(back, t)
    again = io.BytesIO()
    TR.write_tensor(again, A.to_numpy(t), "name")
    assert again.getvalue() == mine  # same input, same bytes


@pytest.mark.parametrize("obj", [[None], {"iteration": 0, "checkpoint_version": 3.0}])
def test_object_record_is_torch_saves_bytes(obj):
    ref = _torch_save(obj)
    buf = io.BytesIO()
    TR.write_object(buf, obj, "x")
    assert _before_ident(buf.getvalue()) == _before_ident(ref)
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=True) == obj


def test_metadata_stand_ins_pickle_as_torchs_objects():
    def md(size, dtype):
        props = DM.TensorProperties(dtype=dtype)
        t = DM.TensorStorageMetadata(
            props, size([4, 6]), [DM.ChunkStorageMetadata(size([0, 0]), size([4, 6]))]
        )
        index = DM.MetadataIndex("w", size([0, 0]), 0)
        return DM.Metadata({"w": t}, storage_data={index: DM.StorageInfo("__0_0.distcp", 0, 9)})

    real = md(torch.Size, torch.bfloat16)
    real.state_dict_metadata["w"].properties.layout = torch.strided
    ours = md(DM.Size, DM.dtype_ref("bfloat16"))
    import pickle

    import torch.distributed.checkpoint.metadata as dmd

    loaded = pickle.loads(DM.dumps(ours))  # DCP's own classes, torch's own Size and dtype
    assert type(loaded) is dmd.Metadata
    w = loaded.state_dict_metadata["w"]
    assert type(w.size) is torch.Size and w.properties.dtype is torch.bfloat16
    assert w.properties.layout is torch.strided
    assert loaded == pickle.loads(DM.dumps(real))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_hf2mg_runs_without_torch(tmp_path, dtype):
    """The conversion never imports torch (the point of the numpy path: seconds per run),
    with or without a cast (the tiny model is float32)."""
    hf = tmp_path / "hf"
    tiny.make_model(hf, arch="qwen2", layers=2, tied=True)
    out = tmp_path / "mg"
    code = (
        "import sys; from llmbuild import cli; "
        f"sys.argv = ['llmbuild', 'convert', 'hf2mg', '--hf', {str(hf)!r}, '--output', "
        f"{str(out)!r}, '--tp', '2', '--pp', '2', '--dtype', {dtype!r}]; "
        "rc = cli.main(); import json; "
        "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"rc": 0, "torch": False}
    assert (out / "iter_0000000" / ".metadata").is_file()


def test_cast_in_blocks_equals_torch(monkeypatch):
    """bfloat16 casts run BLOCK elements at a time (bounded temporaries); blocks that do not
    divide the tensor give torch's bits all the same."""
    monkeypatch.setattr(A, "BLOCK", 333)
    x = _specials()[: 7 * 1001].reshape(7, 1001)
    pairs = [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32),
             (torch.bfloat16, torch.float16), (torch.float16, torch.bfloat16)]  # fmt: skip
    for src, dst in pairs:
        t = x.to(src)
        got = A.cast(A.to_numpy(t), A.dtype_name(dst))
        assert got.shape == (7, 1001)
        assert np.array_equal(got.view(np.uint8), _bits(t.to(dst)))
