"""The torch-free conversion path: numpy casts round as torch does, both backends' records are
the bytes torch.save writes, both backends' metadata pickle as DCP's own objects, and hf2mg
with the numpy backend runs without importing torch."""

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
from llmbuild.convert.formats import BACKENDS, backends
from llmbuild.convert.formats import dcp_meta as DM
from llmbuild.convert.formats import torch_record as TR

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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3,), (2, 3), (1, 5, 7), (300, 70000), (1, 2, 3, 4)])
def test_record_is_torch_saves_bytes(dtype, shape, backend):
    t = torch.randn(shape).to(dtype)
    ref = _torch_save(t)
    write = backends.get(backend).tensor
    buf = io.BytesIO()
    write(buf, A.to_numpy(t), "name")
    mine = buf.getvalue()
    assert len(mine) == len(ref)
    # identical up to the serialization id (torch draws it at random; ours is derived)
    assert _before_ident(mine) == _before_ident(ref)
    back = torch.load(io.BytesIO(mine), weights_only=True)
    assert back.dtype == dtype and torch.equal(back, t)
    if backend == "numpy":
        again = io.BytesIO()
        assert TR.write_tensor(again, A.to_numpy(t), "name") == len(mine)
        assert again.getvalue() == mine  # same input, same bytes


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("obj", [[None], {"iteration": 0, "checkpoint_version": 3.0}])
def test_object_record_is_torch_saves_bytes(obj, backend):
    ref = _torch_save(obj)
    buf = io.BytesIO()
    backends.get(backend).obj(buf, obj, "x")
    assert _before_ident(buf.getvalue()) == _before_ident(ref)
    assert torch.load(io.BytesIO(buf.getvalue()), weights_only=True) == obj


@pytest.mark.parametrize("backend", BACKENDS)
def test_metadata_pickles_as_torchs_objects(backend, tmp_path):
    """Each backend's metadata classes, as the writer uses them, unpickle to DCP's own objects
    with torch's own Size and dtype, equal to the real classes' pickle."""
    import pickle

    import torch.distributed.checkpoint.metadata as dmd

    def md(ns):
        props = ns.TensorProperties(dtype=ns.dtype("bfloat16"))
        t = ns.TensorStorageMetadata(
            props, ns.Size([4, 6]), [ns.ChunkStorageMetadata(ns.Size([0, 0]), ns.Size([4, 6]))]
        )
        index = ns.MetadataIndex("w", ns.Size([0, 0]), 0)
        return ns.Metadata({"w": t}, storage_data={index: ns.StorageInfo("__0_0.distcp", 0, 9)})

    be = backends.get(backend)
    loaded = pickle.loads(be.dumps(md(be.meta())))
    assert type(loaded) is dmd.Metadata
    w = loaded.state_dict_metadata["w"]
    assert type(w.size) is torch.Size and w.properties.dtype is torch.bfloat16
    assert w.properties.layout is torch.strided
    assert loaded == pickle.loads(pickle.dumps(md(backends.get("torch").meta())))
    # and either file reads back as the stand-ins (no torch needed to read)
    (tmp_path / ".metadata").write_bytes(be.dumps(md(be.meta())))
    assert isinstance(DM.load(tmp_path / ".metadata"), DM.Metadata)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_hf2mg_runs_without_torch(tmp_path, dtype):
    """The conversion never imports torch (the point of the numpy path: seconds per run),
    with or without a cast (the tiny model is float32)."""
    hf = tmp_path / "hf"
    tiny.make_model(hf, arch="qwen2", layers=2, tied=True)
    out = tmp_path / "mg"
    code = (
        "import sys; from llmbuild import cli; "
        f"sys.argv = ['llmbuild', 'convert', 'hf2mg', '--input', {str(hf)!r}, '--output', "
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
