"""dcp_meta's stand-ins pickle to what torch.distributed.checkpoint reads as its own classes and
back, refuse anything else; torch_record.load_record maps the tensors torch.save wrote."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint.filesystem as dfs
import torch.distributed.checkpoint.metadata as dmd

from llmbuild.convert import arrays as A
from llmbuild.convert.formats import BACKENDS, backends
from llmbuild.convert.formats import dcp_meta as DM
from llmbuild.convert.formats import torch_record as TR
from llmbuild.errors import UserError


def _ours() -> DM.Metadata:
    props = DM.TensorProperties(dtype=torch.bfloat16)
    md = {
        "w": DM.TensorStorageMetadata(
            props,
            torch.Size([4, 6]),
            [
                DM.ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 6])),
                DM.ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([2, 6])),
            ],
        ),
        "obj/shard_0_1": DM.BytesStorageMetadata(),
    }
    storage = {
        DM.MetadataIndex("w", torch.Size([0, 0]), 0): DM.StorageInfo("__0_0.distcp", 0, 100),
        DM.MetadataIndex("w", torch.Size([2, 0]), 1): DM.StorageInfo("__1_0.distcp", 0, 100),
        DM.MetadataIndex("obj/shard_0_1"): DM.StorageInfo("__0_0.distcp", 100, 20),
    }
    return DM.Metadata(state_dict_metadata=md, storage_data=storage)


def _real() -> dmd.Metadata:
    props = dmd.TensorProperties(dtype=torch.bfloat16)
    md = {
        "w": dmd.TensorStorageMetadata(
            props,
            torch.Size([4, 6]),
            [
                dmd.ChunkStorageMetadata(torch.Size([0, 0]), torch.Size([2, 6])),
                dmd.ChunkStorageMetadata(torch.Size([2, 0]), torch.Size([2, 6])),
            ],
        ),
        "obj/shard_0_1": dmd.BytesStorageMetadata(),
    }
    storage = {
        dmd.MetadataIndex("w", [0, 0], 0): dfs._StorageInfo("__0_0.distcp", 0, 100),
        dmd.MetadataIndex("w", [2, 0], 1): dfs._StorageInfo("__1_0.distcp", 0, 100),
        dmd.MetadataIndex("obj/shard_0_1"): dfs._StorageInfo("__0_0.distcp", 100, 20),
    }
    return dmd.Metadata(state_dict_metadata=md, storage_data=storage)


def _same(ours: DM.Metadata, real: dmd.Metadata) -> None:
    assert set(ours.state_dict_metadata) == set(real.state_dict_metadata)
    o, r = ours.state_dict_metadata["w"], real.state_dict_metadata["w"]
    assert type(o).__name__ == type(r).__name__ == "TensorStorageMetadata"
    assert o.size == r.size and o.properties.dtype == r.properties.dtype
    assert o.properties.layout == r.properties.layout == torch.strided
    assert [(c.offsets, c.sizes) for c in o.chunks] == [(c.offsets, c.sizes) for c in r.chunks]
    assert type(ours.state_dict_metadata["obj/shard_0_1"]).__name__ == "BytesStorageMetadata"
    os_ = {(k.fqn, k.offset): (v.relative_path, v.offset, v.length) for k, v in
           ours.storage_data.items()}  # fmt: skip
    rs = {(k.fqn, k.offset): (v.relative_path, v.offset, v.length) for k, v in
          real.storage_data.items()}  # fmt: skip
    assert os_ == rs


@pytest.mark.parametrize("backend", BACKENDS)
def test_dumps_is_read_by_dcp_as_its_own_classes(tmp_path, backend):
    dumps = backends.get(backend).dumps
    made = _ours() if backend == "numpy" else _real()
    loaded = pickle.loads(dumps(made))
    assert type(loaded) is dmd.Metadata
    assert type(loaded.state_dict_metadata["w"]) is dmd.TensorStorageMetadata
    assert all(type(v) is dfs._StorageInfo for v in loaded.storage_data.values())
    assert loaded == _real()  # dataclass equality, field by field
    _same(_ours(), loaded)
    # and DCP's own reader accepts the file
    (tmp_path / ".metadata").write_bytes(dumps(made))
    read = dfs.FileSystemReader(str(tmp_path)).read_metadata()
    read.storage_meta = None  # the reader stamps its own load id
    assert read == _real()


def test_load_reads_what_dcp_pickles(tmp_path):
    (tmp_path / ".metadata").write_bytes(pickle.dumps(_real()))
    md = DM.load(tmp_path / ".metadata")
    assert isinstance(md, DM.Metadata)
    _same(md, _real())
    assert md.state_dict_metadata["w"].properties.memory_format == DM.MemFormat(0)


def test_load_refuses_anything_else_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / ".metadata").write_bytes(DM.dumps(DM.Metadata({"x": Evil()})))
    with pytest.raises(UserError) as exc:
        DM.load(tmp_path / ".metadata")
    assert "system" in str(exc.value) and "\n" not in str(exc.value)
    assert not marker.exists()
    (tmp_path / ".metadata").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="unreadable torch_dist metadata"):
        DM.load(tmp_path / ".metadata")


@pytest.mark.parametrize("crc", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_load_record_maps_plain_tensors(tmp_path, dtype, crc, monkeypatch):
    """Mapped records equal torch.load's, with or without CRC32 (torch_dist.write writes none)."""
    t = (torch.randn(37, 5) * 100).to(dtype)
    path = tmp_path / "f.distcp"
    monkeypatch.setattr(torch, "load", None)  # no fallback: the mapped path must read it
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(crc)
    try:
        _write_records(path, t)
    finally:
        torch.serialization.set_crc32_options(before)
    off, n, n2 = json.loads(path.with_suffix(".json").read_text())
    with path.open("rb") as f:
        got = TR.load_record(f, off, n)
        view = TR.load_record(f, off + n, n2)
    assert isinstance(got, np.ndarray)  # mapped as numpy: no torch needed to read
    assert A.to_torch(got).dtype == dtype and torch.equal(A.to_torch(got), t)
    assert torch.equal(A.to_torch(np.ascontiguousarray(view)), t[:, 1:3])
    got[0, 0] = 1  # private mapping: writable, the file is untouched
    with path.open("rb") as f:
        assert torch.equal(A.to_torch(TR.load_record(f, off, n)), t)


def _write_records(path, t):
    with path.open("wb") as f:
        f.write(b"x" * 13)  # records start anywhere in the file
        off = f.tell()
        torch.save(t, f)
        n = f.tell() - off
        torch.save(t[:, 1:3], f)  # a view: torch.save writes the whole storage
        n2 = f.tell() - off - n
    path.with_suffix(".json").write_text(json.dumps([off, n, n2]))


def test_load_record_falls_back_for_other_records(tmp_path):
    buf = io.BytesIO()
    torch.save({"a": torch.arange(3)}, buf)
    path = tmp_path / "f.distcp"
    path.write_bytes(buf.getvalue())
    with path.open("rb") as f:
        got = TR.load_record(f, 0, len(buf.getvalue()))
    assert torch.equal(got["a"], torch.arange(3))


def test_verify_worker_checks_in_its_process_and_falls_back(tmp_path):
    """mg2hf's transformers check runs in the worker (imports done while converting); a worker
    that died still gets the check done, in the parent."""
    import json
    import sys
    from pathlib import Path

    from llmbuild.convert.verify import VerifyWorker

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny

    good = tmp_path / "good"
    tiny.make_model(good, arch="llama", layers=2)
    with VerifyWorker() as w:
        w.check(good, weights=True)
    bad = tmp_path / "bad"
    tiny.make_model(bad, arch="llama", layers=2)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_hidden_layers"] = 3  # weights of layer 2 missing
    (bad / "config.json").write_text(json.dumps(cfg))
    for kill in (False, True):
        with VerifyWorker() as w:
            if kill:
                w.proc.kill()
                w.proc.wait()
            with pytest.raises(UserError) as exc:
                w.check(bad, weights=True)
        assert "missing_keys" in str(exc.value) and "\n" not in str(exc.value)


def test_mg2hf_streams_column_parallel_tensors_as_row_blocks(tmp_path):
    """At TP=2 the SwiGLU halves and the vocabulary come as the two stored chunks (no
    assembled copy), row-parallel tensors are assembled, and either way the bytes are the
    source's."""
    import sys
    from pathlib import Path

    from llmbuild.convert import checkpointer as C
    from llmbuild.convert import mg2hf
    from llmbuild.convert.formats import safetensors_io as S

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny

    tiny.make_model(tmp_path / "hf", arch="llama", layers=2)
    C.hf_to_megatron(tmp_path / "hf", tmp_path / "mg", tp=2, pp=1)
    src = C.open_megatron(tmp_path / "mg")
    reader, args = src.reader, src.desc.args
    ffn = args.ffn_hidden_size
    gate = reader.read_key_rows("decoder.layers.1.mlp.linear_fc1.weight", (ffn, args.hidden_size),
                                "float32")  # fmt: skip
    assert gate is not None and len(gate) == 2
    assert all(p.flags.c_contiguous for p in gate)
    assert reader.read_key_rows(
        "decoder.layers.1.self_attention.linear_proj.weight",
        (args.hidden_size, args.hidden_size),
        "float32",
    ) is None  # fmt: skip
    kinds = [type(t).__name__ for t in mg2hf.iter_hf_tensors(src, "float32")]
    assert kinds.count("Rows") >= 2 * args.num_layers + 1  # gate, up per layer; embedding
    _, back = C.megatron_to_hf_tensors(tmp_path / "mg")
    with S.LazyHFWeights(tmp_path / "hf") as orig:
        assert set(back) <= set(orig)
        assert all(torch.equal(back[k], orig[k]) for k in back)


def test_verify_meta_mode_checks_names_and_shapes_without_loading(tmp_path):
    """--verify meta: the model built on the meta device against the safetensors headers as
    the safetensors library reads them: passes a good directory, names what is missing and
    what has the wrong shape."""
    import json
    import sys
    from pathlib import Path

    from llmbuild.convert.verify import verify_hf_dir

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny

    good = tmp_path / "good"
    tiny.make_model(good, arch="llama", layers=2)
    verify_hf_dir(good, weights=False)
    cfg = json.loads((good / "config.json").read_text())
    for change, word in (({"num_hidden_layers": 3}, "missing_keys"),
                         ({"intermediate_size": cfg["intermediate_size"] * 2},
                          "mismatched_keys")):  # fmt: skip
        bad = tmp_path / word
        tiny.make_model(bad, arch="llama", layers=2)
        (bad / "config.json").write_text(json.dumps(cfg | change))
        with pytest.raises(UserError, match=word):
            verify_hf_dir(bad, weights=False)
