"""megatron-core torch_dist checkpoint -> a complete HF directory, one tensor at a time.

Per megatron tensor, in key-map order: read it from the stored chunks that hold it (padded rows
are never read; chunks that tile it by rows are handed on as views, never assembled), split it
into its HF tensors as its rule says (``weights``), cast, and stream them into safetensors
shards (``formats.safetensors_io``); beside them the source's config (written as the class
transformers loads natively) and its tokenizer and generation files (``hfdir``). The caller
then checks the directory with transformers (``verify``). Bad input stops before any output
with one ``UserError``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbuild import dtypes, hfdir
from llmbuild.convert import arrays as A
from llmbuild.convert import registry as R
from llmbuild.convert.formats import safetensors_io as S
from llmbuild.convert.formats.torch_dist import sharded_key
from llmbuild.convert.formats.torch_dist_reader import TorchDistReader
from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import description as M

if TYPE_CHECKING:
    import torch

MAX_SHARD_BYTES = 5 * 1024**3


@dataclass
class MegatronSource:
    """A megatron checkpoint checked for mg2hf: description, iteration dir, reader."""

    desc: M.ModelDescription
    spec: R.ArchSpec
    iteration: int
    reader: TorchDistReader


def open_megatron(load_dir: str | Path) -> MegatronSource:
    """The latest checkpoint under ``load_dir``, checked against its llmbuild_model.json: the
    architecture is known, every file the torch_dist metadata names is there and complete,
    every tensor has the global shape the description implies, and the TP/PP the chunks were
    written with is the one the description records."""
    desc = M.load_description(load_dir)
    desc_path = Path(load_dir) / M.DESCRIPTION_FILE
    spec = R.ARCHS.get(desc.args.architecture)
    if spec is None:
        raise UserError(
            f"architecture {desc.args.architecture!r} is not supported; supported: {R.supported()}",
            path=desc_path,
            field="megatron.architecture",
        )
    iteration, d = ckpt.latest_dir(load_dir)
    reader = TorchDistReader(d)
    stored = reader.tensors()
    tp, pp = reader.inferred_layout()
    if (tp, pp) != (desc.tp, desc.pp):
        raise UserError(
            f"says tp={desc.tp} pp={desc.pp}, but {d.name}'s torch_dist metadata was written "
            f"with tp={tp} pp={pp}; the checkpoint and its description do not belong together",
            path=desc_path,
            field="tp/pp",
        )
    for key, shape in R.megatron_shapes(spec, desc.args).items():
        fqn, layer = sharded_key(key)
        want = shape if layer is None else (desc.args.num_layers, *shape)
        if fqn not in stored:
            raise UserError(f"tensor {fqn} is missing from {d.name}", path=d)
        if stored[fqn][0] != want:
            raise UserError(
                f"tensor {fqn} has global shape {list(stored[fqn][0])}, the description "
                f"implies {list(want)}",
                path=desc_path,
                field="megatron",
            )
    return MegatronSource(desc, spec, iteration, reader)


def hf_specs(src: MegatronSource, dtype: str) -> list[S.TensorSpec]:
    """Name, dtype and shape of every HF tensor mg2hf writes, in writing order."""
    args = src.desc.args
    return [
        S.TensorSpec(k, dtype, src.spec.hf_shape(k, args))
        for _, keys in R.key_table(src.spec, args).values()
        for k in keys
    ]


@dataclass
class _Stored:
    """One megatron tensor's stored chunks, read in ``dtype`` (``weights.Stored``)."""

    reader: TorchDistReader
    key: str
    dtype: str

    def rows(self, shape: tuple[int, ...], row: int = 0) -> Any:
        parts = self.reader.read_key_rows(self.key, shape, self.dtype, row=row)
        if parts is None:
            return self.reader.read_key(self.key, shape, self.dtype, row=row)
        return S.Rows(parts)

    def whole(self, shape: tuple[int, ...]) -> Any:
        return self.reader.read_key(self.key, shape, self.dtype)


def iter_hf_tensors(src: MegatronSource, dtype: str) -> Iterator[Any]:
    """The HF tensors in ``hf_specs`` order (numpy arrays, ``arrays``: no torch), each made
    from one megatron tensor read on demand. A tensor whose stored chunks tile it by rows
    (column-parallel, vocabulary, SwiGLU halves) comes as ``Rows`` of mapped chunks, never
    assembled; others are assembled and split."""
    args = src.desc.args
    shapes = R.megatron_shapes(src.spec, args)
    for key, (rule, _) in R.key_table(src.spec, args).items():
        yield from rule.how.stream_out(_Stored(src.reader, key, dtype), shapes[key], args)


def megatron_to_hf_tensors(
    load_dir: str | Path, *, dtype: str = "float32"
) -> tuple[M.ModelDescription, dict[str, torch.Tensor]]:
    """The whole HF state dict of a megatron checkpoint in memory, as torch tensors (tests,
    small models)."""
    src = open_megatron(load_dir)
    try:
        specs = hf_specs(src, dtype)
        return src.desc, {
            s.name: A.to_torch(A.contiguous(t.tensor() if isinstance(t, S.Rows) else t))
            for s, t in zip(specs, iter_hf_tensors(src, dtype), strict=True)
        }
    finally:
        src.reader.close()


def hf_config_out(desc: M.ModelDescription, dtype: str) -> dict[str, Any]:
    """config.json of the converted model: the source's, with the architecture transformers
    loads natively and the written dtype."""
    cfg = dict(desc.hf_config)
    spec = R.ARCHS[desc.args.architecture]
    if spec.write_as is not None:
        cfg["architectures"], cfg["model_type"] = [spec.write_as[0]], spec.write_as[1]
        cfg.pop("auto_map", None)
    cfg.setdefault("architectures", [spec.architectures[0]])
    cfg["dtype"] = dtype
    cfg.pop("torch_dtype", None)
    return cfg


def megatron_to_hf(
    load_dir: str | Path,
    hf_source: str | Path,
    out_dir: Path,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: Callable[[int, int], None] | None = None,
    source: MegatronSource | None = None,
    written: Callable[[Path, int], None] | None = None,
) -> dict[str, Any]:
    """Write a complete HF directory into ``out_dir`` (existing, empty): config.json,
    generation_config.json, the source's tokenizer files, safetensors (+ index if sharded).
    ``source``: ``open_megatron(load_dir)`` if the caller has it already (closed here)."""
    started = time.perf_counter()
    hfdir.check_tokenizer(hf_source, field="--hf-source")
    src = source or open_megatron(load_dir)
    try:
        out_dtype = (
            dtype or src.desc.extra.get("source_dtype") or hfdir.config_dtype(src.desc.hf_config)
        )
        dtypes.check(out_dtype)
        cfg = hf_config_out(src.desc, out_dtype)
        copied = hfdir.copy_companions(hf_source, out_dir)
        if "generation_config.json" not in copied:  # servers read eos from it
            gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
            (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        specs = hf_specs(src, out_dtype)
        total = sum(s.nbytes for s in specs)
        files = S.write_sharded(
            out_dir,
            specs,
            iter_hf_tensors(src, out_dtype),
            max_shard_bytes=max_shard_bytes,
            progress=None if progress is None else (lambda n: progress(n, total)),
            written=written,
        )
    finally:
        src.reader.close()
    return {
        "architecture": src.desc.args.architecture,
        "iteration": src.iteration,
        "dtype": out_dtype,
        "tensors": len(specs),
        "bytes": total,
        "weights": files,
        "copied": copied,
        "chat_template": hfdir.has_chat_template(out_dir),
        "seconds": round(time.perf_counter() - started, 3),
    }
