"""megatron-core's torch_dist checkpoint: its layout, and the writer that makes it chunk by chunk.

A torch_dist checkpoint (``iter_XXXXXXX/``) is a torch.distributed.checkpoint (DCP) directory:
``.metadata`` (a pickled ``Metadata``: every tensor's global shape and the chunks it is stored
in, and where each chunk lies in which ``.distcp`` file), the ``__<rank>_0.distcp`` files (each
chunk a ``torch.save`` record), ``common.pt`` (the non-tensor state) and ``metadata.json``
(megatron's backend marker). megatron-core's sharded keys stack the layers on a leading axis::

    decoder.layers.self_attention.linear_qkv.weight     [num_layers, qkv_rows, hidden]

and every layer of every tensor-parallel rank is one chunk. ``layout`` gives exactly that, as
megatron-core 0.16.1 writes it for a GPTModel with the local layer spec at ``tp`` x ``pp`` (one
file per rank, a tensor-parallel rank's slice per chunk, SwiGLU's fc1 as separate gate and up
chunks: the regions each weight combination gives, ``weights``); ``write`` produces one global
tensor at a time, so a conversion holds one tensor, never the model. megatron-core loads it at
any TP/PP (it reshards torch_dist on load). The records and the metadata are written by a
backend (``backends``: numpy, no torch; or torch itself). The reader is ``torch_dist_reader``.

``test_parity.py`` checks this layout against megatron-core's own ``sharded_state_dict``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llmbuild import parallel
from llmbuild.convert import arrays as A
from llmbuild.convert.formats import backends
from llmbuild.mcore.checkpoint import CHECKPOINT_VERSION

LAYERS = "decoder.layers."
# megatron.core.models.gpt.gpt_layer_specs.get_gpt_layer_local_spec: sharded_state_dict_keys_map
SHARDED_RENAMES = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}
# Modules whose (empty) ``_extra_state`` megatron saves as a ShardedObject per layer.
EXTRA_STATE_MODULES = (
    "self_attention.linear_proj",
    "self_attention.linear_qkv",
    "mlp.linear_fc1",
    "mlp.linear_fc2",
)
# Stored by the last pipeline stage; every other key outside the layers by the first.
LAST_STAGE_KEYS = ("decoder.final_layernorm.weight", "output_layer.weight")
METADATA_JSON = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}
# The tensor whose chunks tell the layout: row-parallel (split on its last axis), in every layer.
PROBE = "decoder.layers.self_attention.linear_proj.weight"


def sharded_key(state_key: str) -> tuple[str, int | None]:
    """``decoder.layers.3.input_layernorm.weight`` ->
    (``decoder.layers.self_attention.linear_qkv.layer_norm_weight``, 3)."""
    if not state_key.startswith(LAYERS):
        return state_key, None
    idx, rest = state_key[len(LAYERS) :].split(".", 1)
    for old, new in SHARDED_RENAMES.items():
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    return LAYERS + rest, int(idx)


class Splits(Protocol):
    """How a global tensor is stored across tensor-parallel ranks (a ``weights`` combination)."""

    def regions(self, shape: tuple[int, ...], tp: int) -> list[tuple[int, A.Region]]: ...


@dataclass(frozen=True)
class Chunk:
    fqn: str  # sharded key
    global_shape: tuple[int, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    key: str  # megatron global state-dict key (concrete layer)
    region: A.Region  # of that key's global tensor
    rank: int  # the writing rank (tp_rank + tp * stage)


@dataclass(frozen=True)
class Layout:
    chunks: list[Chunk]
    objects: list[tuple[str, int]]  # (ShardedObject unique key, writing rank)


def layout(
    splits: Mapping[str, Splits],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    num_layers: int,
    tp: int,
    pp: int,
    pp_layers: tuple[int, ...] | None = None,
) -> Layout:
    """Every chunk megatron-core would write for this model at ``tp`` x ``pp`` (data-parallel
    size 1), in the order of ``splits`` (every megatron key of the model, with how it is split
    across tensor-parallel ranks), so each global tensor is produced once.

    ``shapes``: the global shape of each megatron key (from the converted tensors' plan)."""
    stage = parallel.stage_of_layer(num_layers, pp, pp_layers)
    chunks: list[Chunk] = []
    for key, how in splits.items():
        fqn, layer = sharded_key(key)
        shape = shapes[key]
        if layer is None:
            st = pp - 1 if key in LAST_STAGE_KEYS else 0
            prefix_off, prefix_size, gshape = (), (), shape
        else:
            st = stage[layer]
            prefix_off, prefix_size, gshape = (layer,), (1,), (num_layers, *shape)
        for r, region in how.regions(shape, tp):
            chunks.append(
                Chunk(
                    fqn=fqn,
                    global_shape=gshape,
                    offsets=prefix_off + tuple(s for s, _ in region),
                    sizes=prefix_size + tuple(n for _, n in region),
                    key=key,
                    region=region,
                    rank=r + tp * st,
                )
            )
    objects = [
        (f"{LAYERS}{m}._extra_state/shard_{layer}_{num_layers}", tp * stage[layer])
        for layer in range(num_layers)
        for m in EXTRA_STATE_MODULES
    ]
    return Layout(chunks, objects)


def write(
    iter_dir: Path,
    lay: Layout,
    tensor_of: Callable[[str], Any],
    *,
    iteration: int = 0,
    backend: str = "numpy",
    progress: Callable[[int], None] | None = None,
    written: Callable[[Path, int], None] | None = None,
) -> int:
    """Write ``iter_dir`` (an existing empty directory). ``tensor_of(key)`` gives the global
    megatron tensor of a state-dict key (a numpy array of a logical dtype, see ``arrays``, a
    torch tensor, or an ``arrays.Cat`` of them), in the target dtype; it is called once per
    key, in layout order. Returns the bytes of tensor data written. The numpy backend needs no
    torch (``backends``).

    ``written(path, size)``: told after each record that a ``.distcp`` file has ``size``
    bytes on disk so far (the files only grow), e.g. to hash them while writing goes on."""
    be = backends.get(backend)
    dcp = be.meta()
    files: dict[int, Any] = {}

    def stream(rank: int) -> tuple[str, Any]:
        name = f"__{rank}_0.distcp"
        if rank not in files:
            files[rank] = (iter_dir / name).open("wb")
        return name, files[rank]

    def told(name: str, f: Any) -> None:
        if written is not None:
            f.flush()
            written(iter_dir / name, f.tell())

    md: dict[str, Any] = {}
    storage: dict[Any, Any] = {}
    nbytes = 0
    current: tuple[str, Any] = ("", None)
    try:
        for c in lay.chunks:
            if current[0] != c.key:
                current = (c.key, None)  # drop the previous tensor before making the next
                current = (c.key, tensor_of(c.key))
            part = A.to_numpy(A.region_of(current[1], c.region))
            if len(c.sizes) > len(c.region):
                part = part[None]
            name, f = stream(c.rank)
            off = f.tell()
            be.tensor(f, part, f"{c.fqn}@{c.offsets}")
            meta = md.setdefault(
                c.fqn,
                dcp.TensorStorageMetadata(
                    properties=dcp.TensorProperties(dtype=dcp.dtype(A.dtype_name(part))),
                    size=dcp.Size(c.global_shape),
                    chunks=[],
                ),
            )
            index = dcp.MetadataIndex(c.fqn, dcp.Size(c.offsets), len(meta.chunks))
            meta.chunks.append(
                dcp.ChunkStorageMetadata(offsets=dcp.Size(c.offsets), sizes=dcp.Size(c.sizes))
            )
            storage[index] = dcp.StorageInfo(name, off, f.tell() - off)
            told(name, f)
            nbytes += part.nbytes
            if progress is not None:
                progress(nbytes)
        current = ("", None)
        for fqn, rank in lay.objects:
            name, f = stream(rank)
            off = f.tell()
            be.obj(f, [None], fqn)  # megatron's serialisation of a list of ShardedObject data
            md[fqn] = dcp.BytesStorageMetadata()
            storage[dcp.MetadataIndex(fqn)] = dcp.StorageInfo(name, off, f.tell() - off)
        for rank, f in files.items():
            told(f"__{rank}_0.distcp", f)
    finally:
        for f in files.values():
            f.close()
    metadata = dcp.Metadata(state_dict_metadata=md, storage_data=storage)
    (iter_dir / ".metadata").write_bytes(be.dumps(metadata))
    with (iter_dir / "common.pt").open("wb") as f:
        be.obj(f, {"iteration": iteration, "checkpoint_version": CHECKPOINT_VERSION}, "common")
    (iter_dir / "metadata.json").write_text(json.dumps(METADATA_JSON))
    return nbytes
