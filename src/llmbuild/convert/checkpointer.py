"""All file I/O of conversion: HF directories and megatron-core torch_dist checkpoints.

The tensor logic lives in ``registry`` / ``weights`` (pure); this module feeds them tensors read
one at a time and writes each result as soon as it is made, so a conversion holds about one
tensor (the largest: the embedding) besides the interpreter, never the model:

- hf2mg: HF safetensors (``safetensors_io``, validated up front) -> per megatron tensor: read
  its HF tensors, combine (QKV interleave, gate/up fusion, vocabulary padding), cast, write its
  tensor-parallel chunks into the per-rank ``.distcp`` files (``torch_dist``). One process,
  whatever ``--tp``/``--pp``: the layout is the chunks and files megatron-core would write.
- mg2hf: per megatron tensor: read it from the chunks that hold it (padded rows are never read),
  split, cast, stream into safetensors shards; then check the directory with transformers.

Bad input stops before any output with one ``UserError``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbuild.convert import arrays as A
from llmbuild.convert import registry as R
from llmbuild.convert import safetensors_io as S
from llmbuild.convert import torch_dist as TD
from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import model as M

if TYPE_CHECKING:
    import torch

SAFETENSORS_INDEX = S.INDEX
SAFETENSORS_SINGLE = S.SINGLE
LazyHFWeights = S.LazyHFWeights
# Files a served HF directory needs besides the weights; copied from --hf-source.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
REQUIRED_SOURCE_FILES = ("tokenizer_config.json",)
MAX_SHARD_BYTES = 5 * 1024**3
_DTYPES = ("float32", "bfloat16", "float16")


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise UserError("no config.json: not a Hugging Face model directory", path=hf_dir)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON ({exc})", path=path) from exc


def _dtype_of(hf_config: Mapping[str, Any]) -> str:
    d = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
    return str(d).replace("torch.", "")


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
    cfg = read_hf_config(hf_dir)
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
        want, got = R.hf_shape(key, args), weights.infos[key].shape
        if got != want:
            raise UserError(
                f"tensor {key} has shape {list(got)}, config.json implies {list(want)}",
                path=weights.file_of[key],
            )
    return HFSource(cfg, spec, args, weights)


def check_hf_dir(hf_dir: str | Path) -> R.ArchSpec:
    """Fail early on a directory this converter cannot read (no config, unknown arch)."""
    cfg = read_hf_config(hf_dir)
    spec = R.find_arch(cfg, path=Path(hf_dir) / "config.json")
    S.LazyHFWeights(hf_dir).close()
    return spec


# --------------------------------------------------------------------------- HF -> megatron


def hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    tp: int,
    pp: int,
    dtype: str = "float32",
    make_vocab_size_divisible_by: int = 128,
    pp_layers: tuple[int, ...] | None = None,
    progress: Callable[[int, int], None] | None = None,
    written: Callable[[Path, int], None] | None = None,
) -> ConvertStats:
    """Write a megatron torch_dist checkpoint (iteration 0) of ``hf_dir`` into ``out_dir``
    (an existing, empty directory; the caller makes it atomic). One process, any TP/PP.

    ``dtype``: the stored dtype and the one the description records for training.
    ``progress(done_bytes, total_bytes)`` is called after each chunk; ``written(path, size)``
    as files grow (see ``torch_dist.write``)."""
    import time

    started = time.perf_counter()
    if dtype not in _DTYPES:
        raise UserError(f"dtype {dtype!r}; use one of {', '.join(_DTYPES)}", field="--dtype")
    src = open_hf(
        hf_dir,
        tp=tp,
        pp=pp,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        pp_layers=pp_layers,
    )
    spec, args, weights = src.spec, src.args, src.weights
    shapes = R.megatron_shapes(spec, args)
    lay = TD.layout(spec, args, tp, pp, dtype=dtype, shapes=shapes, pp_layers=pp_layers)
    table = R.key_table(spec, args)
    total = sum(_numel(s) for s in shapes.values()) * A.itemsize(dtype)

    def tensor_of(key: str) -> Any:  # numpy arrays (``arrays``): no torch
        rule, hf_names = table[key]
        parts = [A.cast(weights.array(k), dtype) for k in hf_names]
        if rule.combine == R.GATE_UP:  # [gate; up]: every stored chunk lies in one of them
            return TD.Cat(parts)
        if rule.combine == R.VOCAB and args.padded_vocab_size > args.vocab_size:
            pad = A.zeros_like_rows(parts[0], args.padded_vocab_size - args.vocab_size)
            return TD.Cat([parts[0], pad])
        return R.combine(rule.combine, parts, args)

    out = Path(out_dir)
    target = out / ckpt.iter_name(0)
    target.mkdir(parents=True)
    try:
        nbytes = TD.write(
            target,
            lay,
            tensor_of,
            iteration=0,
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
        extra={"source_dtype": _dtype_of(src.config)}
        | ({"pp_layers": list(pp_layers)} if pp_layers else {}),
    )
    M.save_description(out, desc)
    n_params = sum(_numel(s) for s in shapes.values())
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


# --------------------------------------------------------------------------- megatron -> HF


@dataclass
class MegatronSource:
    """A megatron checkpoint checked for mg2hf: description, iteration dir, reader."""

    desc: M.ModelDescription
    spec: R.ArchSpec
    iteration: int
    reader: TD.TorchDistReader


def open_megatron(load_dir: str | Path) -> MegatronSource:
    """The latest checkpoint under ``load_dir``, checked against its llmbuild_model.json: the
    architecture is known, every file the torch_dist metadata names is there and complete,
    every tensor has the global shape the description implies, and the TP/PP the chunks were
    written with is the one the description records."""
    desc = M.load_description(load_dir)
    spec = R.ARCHS.get(desc.args.architecture)
    if spec is None:
        raise UserError(
            f"architecture {desc.args.architecture!r} is not supported; supported: {R.supported()}",
            path=Path(load_dir) / M.DESCRIPTION_FILE,
            field="megatron.architecture",
        )
    iteration, d = ckpt.latest_dir(load_dir)
    reader = TD.TorchDistReader(d)
    stored = reader.tensors()
    desc_path = Path(load_dir) / M.DESCRIPTION_FILE
    tp, pp = reader.inferred_layout()
    if (tp, pp) != (desc.tp, desc.pp):
        raise UserError(
            f"says tp={desc.tp} pp={desc.pp}, but {d.name}'s torch_dist metadata was written "
            f"with tp={tp} pp={pp}; the checkpoint and its description do not belong together",
            path=desc_path,
            field="tp/pp",
        )
    for key, shape in R.megatron_shapes(spec, desc.args).items():
        fqn, layer = TD.sharded_key(key)
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
        S.TensorSpec(k, dtype, R.hf_shape(k, args))
        for _, keys in R.key_table(src.spec, args).values()
        for k in keys
    ]


def iter_hf_tensors(src: MegatronSource, dtype: str) -> Iterator[Any]:
    """The HF tensors in ``hf_specs`` order (numpy arrays, ``arrays``: no torch), each made
    from one megatron tensor read on demand. A tensor whose stored chunks tile it by rows
    (column-parallel, vocabulary, SwiGLU halves) comes as ``Rows`` of mapped chunks, never
    assembled; others are assembled and split."""
    args = src.desc.args
    shapes = R.megatron_shapes(src.spec, args)

    def rows(key: str, shape: tuple[int, ...], row: int = 0) -> Any:
        parts = src.reader.read_key_rows(key, shape, dtype, row=row)
        if parts is None:
            return src.reader.read_key(key, shape, dtype, row=row)
        return S.Rows(parts)

    for key, (rule, _) in R.key_table(src.spec, args).items():
        if rule.combine == R.VOCAB:  # read the real rows only: no unpadding copy
            yield rows(key, (args.vocab_size, *shapes[key][1:]))
            continue
        if rule.combine == R.GATE_UP:  # gate rows, then up rows, each read on its own
            half = (shapes[key][0] // 2, *shapes[key][1:])
            yield rows(key, half)
            yield rows(key, half, row=half[0])
            continue
        if rule.combine == R.COPY:
            yield rows(key, shapes[key])
            continue
        t = src.reader.read_key(key, shapes[key], dtype)
        parts = R.split(rule.combine, t, args)
        del t
        yield from parts


def megatron_to_hf_tensors(
    load_dir: str | Path, *, device: str = "cpu", dtype: str = "float32"
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


def check_tokenizer_source(source: Path) -> None:
    """The --hf-source of mg2hf has what a served model needs (checked before any work)."""
    if not source.is_dir():
        raise UserError("not a directory", path=source, field="--hf-source")
    for name in REQUIRED_SOURCE_FILES:
        if not (source / name).is_file():
            raise UserError(
                f"missing {name}; the converted model could not be served",
                path=source,
                field="--hf-source",
            )
    if not any((source / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise UserError(
            "no tokenizer.json / tokenizer.model / vocab.json; the converted model could not "
            "be served",
            path=source,
            field="--hf-source",
        )
    if (source / "vocab.json").is_file() and not (source / "tokenizer.json").is_file():
        if not (source / "merges.txt").is_file():
            raise UserError(
                "vocab.json without merges.txt (or tokenizer.json)",
                path=source,
                field="--hf-source",
            )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = source / name
        if path.is_file():
            try:
                json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"invalid JSON ({exc})", path=path, field="--hf-source") from exc


def copy_tokenizer_files(source: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer / generation files a server needs; UserError if the source lacks
    the essential ones (the seeds' classic failure: a reconverted dir that cannot be served)."""
    check_tokenizer_source(source)
    copied = []
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)
            copied.append(name)
    return copied


def has_chat_template(out_dir: Path) -> bool:
    if (out_dir / "chat_template.jinja").is_file() or (out_dir / "chat_template.json").is_file():
        return True
    try:
        cfg = json.loads((out_dir / "tokenizer_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return bool(cfg.get("chat_template"))


def hf_config_out(desc: M.ModelDescription, dtype: str) -> dict[str, Any]:
    """config.json of the converted model: the source's, with the architecture transformers
    loads natively and the written dtype."""
    cfg = dict(desc.hf_config)
    spec = R.ARCHS[desc.args.architecture]
    if spec.name in R.HF_CLASS:
        cls, model_type = R.HF_CLASS[spec.name]
        cfg["architectures"], cfg["model_type"] = [cls], model_type
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
    import time

    started = time.perf_counter()
    check_tokenizer_source(Path(hf_source))
    src = source or open_megatron(load_dir)
    try:
        out_dtype = dtype or src.desc.extra.get("source_dtype") or _dtype_of(src.desc.hf_config)
        if out_dtype not in _DTYPES:
            raise UserError(
                f"dtype {out_dtype!r}; use one of {', '.join(_DTYPES)}", field="--dtype"
            )
        cfg = hf_config_out(src.desc, out_dtype)
        copied = copy_tokenizer_files(Path(hf_source), out_dir)
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
        "chat_template": has_chat_template(out_dir),
        "seconds": round(time.perf_counter() - started, 3),
    }


def verify_hf_dir(out_dir: Path, *, weights: bool = True) -> None:
    """Load ``out_dir`` with transformers: config, tokenizer, and the model (every weight
    loaded, none missing, unexpected or mismatched). ``weights=False`` builds the model on the
    meta device and checks names and shapes against the safetensors headers instead."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(str(out_dir))
        if weights:
            _, info = AutoModelForCausalLM.from_pretrained(
                str(out_dir), output_loading_info=True, dtype="auto"
            )
        else:
            import torch
            from safetensors import safe_open

            cfg = AutoConfig.from_pretrained(str(out_dir))
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(cfg)
            # names and shapes as the safetensors library itself reads the files (the loader
            # transformers uses), not as our own reader does
            stored: dict[str, tuple[int, ...]] = {}
            for path in sorted(set(S.LazyHFWeights(out_dir).file_of.values())):
                with safe_open(str(path), framework="pt") as f:
                    for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                        stored[k] = tuple(f.get_slice(k).get_shape())
            want = {
                k: tuple(v.shape)
                for k, v in model.state_dict().items()
                if not (k == "lm_head.weight" and cfg.tie_word_embeddings)
            }
            info = {
                "missing_keys": sorted(set(want) - set(stored)),
                "unexpected_keys": sorted(set(stored) - set(want)),
                "mismatched_keys": sorted(
                    k for k in set(want) & set(stored) if stored[k] != want[k]
                ),
            }
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure means the dir is not usable
        raise UserError(
            f"transformers cannot load the converted directory: {exc}", path=out_dir
        ) from exc
    bad = {
        k: v
        for k, v in info.items()
        if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if bad:
        raise UserError(f"transformers loaded it with problems: {bad}", path=out_dir)
