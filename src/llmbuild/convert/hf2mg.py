"""HF safetensors -> megatron-core torch_dist checkpoint, one tensor at a time.

HF safetensors (``formats.safetensors_io``, validated up front) -> per megatron tensor: read its
HF tensors, cast, combine as its key-map rule says (``weights``: the QKV interleave, gate/up as
two views, the vocabulary's padding rows), and write its tensor-parallel chunks into the
per-rank ``.distcp`` files (``formats.torch_dist``). One process, whatever ``--tp``/``--pp``:
the layout is the chunks and files megatron-core would write. A conversion holds about one
tensor (the largest: the embedding) besides the interpreter, never the model, and needs no
torch (the numpy backend). Bad input stops before any output with one ``UserError``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild import dtypes, hfdir
from llmbuild.convert import arrays as A
from llmbuild.convert import registry as R
from llmbuild.convert.formats import backends
from llmbuild.convert.formats import safetensors_io as S
from llmbuild.convert.formats import torch_dist as TD
from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import description as M


@dataclass
class ConvertStats:
    architecture: str
    tensors: int
    parameters: int
    padded_vocab_size: int
    bytes_written: int = 0
    dtype: str = "float32"
    seconds: float = 0.0  # the conversion itself: reading, combining, writing (no imports)


@dataclass
class HFSource:
    """An HF directory checked for conversion: config, architecture, derived args, weights."""

    config: dict[str, Any]
    spec: R.ArchSpec
    args: M.ModelArgs
    weights: S.LazyHFWeights


def open_hf(
    hf_dir: str | Path,
    *,
    tp: int,
    pp: int,
    make_vocab_size_divisible_by: int = 128,
    pp_layers: tuple[int, ...] | None = None,
) -> HFSource:
    """Everything hf2mg checks before writing: config, architecture, TP/PP against the heads
    and layers, every shard complete, every tensor present with the shape the config implies."""
    cfg_path = Path(hf_dir) / "config.json"
    cfg = hfdir.read_config(hf_dir)
    spec = R.find_arch(cfg, path=cfg_path)
    args = M.describe(
        cfg,
        spec.name,
        tp=tp,
        qkv_bias=spec.qkv_bias,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        path=cfg_path,
    )
    args.check_parallel(tp, pp, pp_layers)
    weights = S.LazyHFWeights(hf_dir)
    extra = R.unexpected_hf_keys(list(weights), spec, args)
    if extra:
        raise UserError(
            f"{len(extra)} tensors the {spec.name} map does not convert, e.g. "
            f"{extra[:3]}; the architecture does not match config.json",
            path=hf_dir,
        )
    for key in R.hf_keys(spec, args):
        if key not in weights.infos:
            raise UserError(f"missing tensor {key!r}", path=hf_dir)
        want, got = spec.hf_shape(key, args), weights.infos[key].shape
        if got != want:
            raise UserError(
                f"tensor {key} has shape {list(got)}, config.json implies {list(want)}",
                path=weights.file_of[key],
            )
    return HFSource(cfg, spec, args, weights)


def hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    tp: int,
    pp: int,
    dtype: str = "float32",
    make_vocab_size_divisible_by: int = 128,
    pp_layers: tuple[int, ...] | None = None,
    backend: str = "numpy",
    progress: Callable[[int, int], None] | None = None,
    written: Callable[[Path, int], None] | None = None,
) -> ConvertStats:
    """Write a megatron torch_dist checkpoint (iteration 0) of ``hf_dir`` into ``out_dir``
    (an existing, empty directory; the caller makes it atomic). One process, any TP/PP.

    ``dtype``: the stored dtype and the one the description records for training.
    ``backend``: who writes records and metadata (``formats.backends``: numpy or torch).
    ``progress(done_bytes, total_bytes)`` is called after each chunk; ``written(path, size)``
    as files grow (see ``torch_dist.write``)."""
    started = time.perf_counter()
    dtypes.check(dtype)
    backends.get(backend)
    src = open_hf(
        hf_dir,
        tp=tp,
        pp=pp,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        pp_layers=pp_layers,
    )
    spec, args, weights = src.spec, src.args, src.weights
    shapes = R.megatron_shapes(spec, args)
    table = R.key_table(spec, args)
    lay = TD.layout(
        {key: rule.how for key, (rule, _) in table.items()},
        shapes,
        num_layers=args.num_layers,
        tp=tp,
        pp=pp,
        pp_layers=pp_layers,
    )
    n_params = sum(_numel(s) for s in shapes.values())
    total = n_params * A.itemsize(dtype)

    def tensor_of(key: str) -> Any:  # numpy arrays (``arrays``): no torch
        rule, hf_names = table[key]
        return rule.how.stream_in([A.cast(weights.array(k), dtype) for k in hf_names], args)

    out = Path(out_dir)
    target = out / ckpt.iter_name(0)
    target.mkdir(parents=True)
    try:
        nbytes = TD.write(
            target,
            lay,
            tensor_of,
            iteration=0,
            backend=backend,
            progress=None if progress is None else (lambda n: progress(n, total)),
            written=written,
        )
    finally:
        weights.close()
    (out / ckpt.TRACKER).write_text("0\n")
    desc = M.ModelDescription(
        hf_config=src.config,
        args=args,
        tp=tp,
        pp=pp,
        dtype=dtype,
        extra={"source_dtype": hfdir.config_dtype(src.config)}
        | ({"pp_layers": list(pp_layers)} if pp_layers else {}),
    )
    M.save_description(out, desc)
    return ConvertStats(
        spec.name,
        len(shapes),
        n_params,
        args.padded_vocab_size,
        nbytes,
        dtype,
        round(time.perf_counter() - started, 3),
    )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
