"""All file I/O of conversion: lazy safetensors reading, megatron checkpoints, HF directories.

The tensor logic lives in ``registry`` / ``weights`` (pure); this module feeds them tensors
read one at a time (``safe_open``) and writes the results.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbuild.convert import registry as R
from llmbuild.convert import weights as W
from llmbuild.errors import UserError
from llmbuild.mcore import checkpoint as ckpt
from llmbuild.mcore import model as M

if TYPE_CHECKING:
    import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
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


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise UserError("no config.json: not a Hugging Face model directory", path=hf_dir)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"invalid JSON ({exc})", path=path) from exc


class LazyHFWeights(Mapping[str, "torch.Tensor"]):
    """The safetensors of an HF directory as a read-only mapping; each lookup reads one
    tensor from disk (``safe_open``), nothing is loaded up front."""

    def __init__(self, hf_dir: str | Path) -> None:
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        self._open = safe_open
        self._handles: dict[str, Any] = {}
        index = self.dir / SAFETENSORS_INDEX
        single = self.dir / SAFETENSORS_SINGLE
        if index.is_file():
            try:
                self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise UserError(
                    f"unreadable index ({exc})", path=index, field="weight_map"
                ) from exc
        elif single.is_file():
            self.weight_map = {
                k: SAFETENSORS_SINGLE for k in self._handle(SAFETENSORS_SINGLE).keys()
            }
        else:
            found = "pytorch_model.bin" if (self.dir / "pytorch_model.bin").exists() else None
            hint = (
                " (found pytorch_model.bin: re-save it with safe_serialization=True)"
                if found
                else ""
            )
            raise UserError(f"no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}{hint}", path=self.dir)

    def _handle(self, fname: str) -> Any:
        if fname not in self._handles:
            path = self.dir / fname
            if not path.is_file():
                raise UserError("shard named in the index is missing", path=path)
            self._handles[fname] = self._open(str(path), framework="pt", device="cpu")
        return self._handles[fname]

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            fname = self.weight_map[key]
        except KeyError:
            raise UserError(f"missing tensor {key!r}", path=self.dir) from None
        return self._handle(fname).get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.weight_map)

    def __len__(self) -> int:
        return len(self.weight_map)

    def close(self) -> None:
        self._handles.clear()


# --------------------------------------------------------------------------- rank-0 atomic dir


@contextlib.contextmanager
def rank0_atomic_dir(final: str | Path) -> Iterator[Path]:
    """``atomic_dir`` for a collective write: rank 0 owns the temp dir, every rank gets it."""
    import torch

    from llmbuild.atomic import atomic_dir

    dist = torch.distributed
    if not dist.is_initialized() or dist.get_world_size() == 1:
        with atomic_dir(final) as tmp:
            yield tmp
        return
    if dist.get_rank() == 0:
        with atomic_dir(final) as tmp:
            dist.broadcast_object_list([str(tmp)], src=0)
            yield tmp
            dist.barrier()
    else:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0)
        yield Path(box[0])
        dist.barrier()


# --------------------------------------------------------------------------- HF -> megatron


def _global_key(local_key: str, layer_offset: int) -> str:
    prefix = "decoder.layers."
    if layer_offset and local_key.startswith(prefix):
        idx, rest = local_key[len(prefix) :].split(".", 1)
        return f"{prefix}{int(idx) + layer_offset}.{rest}"
    return local_key


def fill_model_from_hf(
    model: Any,
    weights: Mapping[str, torch.Tensor],
    spec: R.ArchSpec,
    args: M.ModelArgs,
    *,
    tp_rank: int,
    tp_size: int,
    layer_offset: int,
) -> int:
    """Copy this rank's shard of every megatron tensor, converted from ``weights``.

    Returns the number of tensors filled; raises if the model and the map disagree.
    """
    import torch

    table = R.key_table(spec, args)
    filled = 0
    params = model.state_dict(keep_vars=True)
    for local_key, param in params.items():
        if local_key.endswith("_extra_state"):
            continue
        key = _global_key(local_key, layer_offset)
        if key == "output_layer.weight" and args.tie_word_embeddings:
            key = "embedding.word_embeddings.weight"  # last pipeline stage's tied copy
        if key not in table:
            raise UserError(
                f"megatron tensor {key} has no rule in the {spec.name} key map",
                field="architectures",
            )
        rule = table[key][0]
        full = R.hf_to_mcore(weights, spec, args, only=[key])[key]
        part = W.tp_shard(full, rule.parallel, tp_rank, tp_size)
        if tuple(part.shape) != tuple(param.shape):
            raise UserError(
                f"{key}: converted shape {tuple(part.shape)} != model shape {tuple(param.shape)}",
                field="config.json",
            )
        with torch.no_grad():
            param.copy_(part.to(param.dtype))
        filled += 1
    return filled


@dataclass
class ConvertStats:
    architecture: str
    tensors: int
    parameters: int
    padded_vocab_size: int


def _dtype_of(hf_config: Mapping[str, Any]) -> str:
    d = hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"
    return str(d).replace("torch.", "")


def check_hf_dir(hf_dir: str | Path) -> R.ArchSpec:
    """Fail early on a directory this converter cannot read (no config, unknown arch)."""
    cfg = read_hf_config(hf_dir)
    spec = R.find_arch(cfg, path=Path(hf_dir) / "config.json")
    LazyHFWeights(hf_dir).close()
    return spec


def hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    *,
    tp: int,
    pp: int,
    device: str,
    dtype: str = "float32",
    make_vocab_size_divisible_by: int = 128,
) -> ConvertStats:
    """Write a megatron torch_dist checkpoint (iteration 0) of ``hf_dir`` into ``out_dir``
    (an existing, empty directory; the caller makes it atomic). Collective over tp*pp ranks."""
    from megatron.core import parallel_state
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    from llmbuild.mcore import device as D

    cfg = read_hf_config(hf_dir)
    spec = R.find_arch(cfg, path=Path(hf_dir) / "config.json")
    args = M.describe(
        cfg,
        spec.name,
        tp=tp,
        qkv_bias=spec.qkv_bias,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
        path=Path(hf_dir) / "config.json",
    )
    args.check_parallel(tp, pp)
    weights = LazyHFWeights(hf_dir)
    extra = R.unexpected_hf_keys(list(weights), spec, args)
    if extra:
        raise UserError(
            f"{len(extra)} tensors the {spec.name} map does not convert, e.g. "
            f"{extra[:3]}; the architecture does not match config.json",
            path=hf_dir,
        )
    backend = D.init_backend(device, tp=tp, pp=pp)
    if backend.dp != 1:
        raise UserError(
            f"conversion runs on exactly tp*pp = {tp * pp} processes, got {backend.world_size}",
            field="--tp/--pp",
        )
    desc = M.ModelDescription(
        hf_config=cfg, args=args, tp=tp, pp=pp, dtype=dtype, extra={"source_dtype": _dtype_of(cfg)}
    )
    config, model = M.build_for_this_rank(desc, tp=tp, pp=pp, device=device)
    model.to(backend.torch_device)
    filled = fill_model_from_hf(
        model,
        weights,
        spec,
        args,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        tp_size=tp,
        layer_offset=get_transformer_layer_offset(config),
    )
    weights.close()
    ckpt.save(out_dir, 0, model)
    if backend.rank == 0:
        M.save_description(out_dir, desc)
    n_params = sum(p.numel() for p in model.parameters())
    return ConvertStats(spec.name, filled, n_params, args.padded_vocab_size)


# --------------------------------------------------------------------------- megatron -> HF


def _shard_plan(tensors: Mapping[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    return shards


def save_hf_weights(
    tensors: Mapping[str, torch.Tensor], out_dir: Path, max_shard_bytes: int = MAX_SHARD_BYTES
) -> list[str]:
    """safetensors, one file or shards + index (transformers' naming)."""
    from safetensors.torch import save_file

    plan = _shard_plan(tensors, max_shard_bytes)
    meta = {"format": "pt"}
    if len(plan) == 1:
        save_file(
            {k: tensors[k].contiguous() for k in plan[0]},
            str(out_dir / SAFETENSORS_SINGLE),
            metadata=meta,
        )
        return [SAFETENSORS_SINGLE]
    names, weight_map, total = [], {}, 0
    for i, keys in enumerate(plan, start=1):
        name = f"model-{i:05d}-of-{len(plan):05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in keys}, str(out_dir / name), metadata=meta)
        names.append(name)
        for k in keys:
            weight_map[k] = name
            total += tensors[k].numel() * tensors[k].element_size()
    (out_dir / SAFETENSORS_INDEX).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
    )
    return names


def copy_tokenizer_files(source: Path, out_dir: Path) -> list[str]:
    """Copy the tokenizer / generation files a server needs; UserError if the source lacks
    the essential ones (the seeds' classic failure: a reconverted dir that cannot be served)."""
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
            "no tokenizer.json / tokenizer.model / vocab.json", path=source, field="--hf-source"
        )
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


_DTYPES = {"float32", "bfloat16", "float16"}


def megatron_to_hf_tensors(
    load_dir: str | Path,
    *,
    device: str = "cpu",
) -> tuple[M.ModelDescription, dict[str, torch.Tensor]]:
    """Load the latest checkpoint under ``load_dir`` (any saved TP/PP) on one process and
    return its description and the HF state dict."""
    from llmbuild.mcore import device as D

    desc = M.load_description(load_dir)
    spec = R.ARCHS.get(desc.args.architecture)
    if spec is None:
        raise UserError(
            f"architecture {desc.args.architecture!r} is not supported; supported: {R.supported()}",
            path=load_dir,
        )
    D.init_backend(device, tp=1, pp=1)
    _, model = M.build_for_this_rank(desc, tp=1, pp=1, device=device)
    ckpt.load(load_dir, model)
    mg = {
        k: v.detach().cpu() for k, v in model.state_dict().items() if not k.endswith("_extra_state")
    }
    return desc, R.mcore_to_hf(mg, spec, desc.args)


def write_hf_dir(
    desc: M.ModelDescription,
    tensors: Mapping[str, torch.Tensor],
    hf_source: str | Path,
    out_dir: Path,
    *,
    dtype: str | None = None,
) -> dict[str, Any]:
    """config.json, safetensors and the source's tokenizer/generation files into ``out_dir``."""
    import torch

    out_dtype = dtype or desc.extra.get("source_dtype") or _dtype_of(desc.hf_config)
    if out_dtype not in _DTYPES:
        raise UserError(f"dtype {out_dtype!r}; use one of {sorted(_DTYPES)}", field="--dtype")
    tdtype = getattr(torch, out_dtype)
    cast = {k: (v.to(tdtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    cfg = dict(desc.hf_config)
    spec = R.ARCHS[desc.args.architecture]
    cfg.setdefault("architectures", [spec.architectures[0]])
    cfg["dtype"] = out_dtype
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = out_dtype
    copied = copy_tokenizer_files(Path(hf_source), out_dir)
    if "generation_config.json" not in copied:  # servers read eos from it
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in cfg}
        (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    files = save_hf_weights(cast, out_dir)
    return {
        "dtype": out_dtype,
        "weights": files,
        "copied": copied,
        "chat_template": has_chat_template(out_dir),
    }


def verify_hf_dir(out_dir: Path, expected: Mapping[str, torch.Tensor]) -> None:
    """Load ``out_dir`` with transformers (model and tokenizer) and check every weight."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(out_dir), output_loading_info=True, dtype="auto"
        )
        AutoTokenizer.from_pretrained(str(out_dir))
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
    sd = model.state_dict()
    for k, t in expected.items():
        if k not in sd or not torch.equal(sd[k], t.to(sd[k].dtype)):
            raise UserError(f"tensor {k} differs after reloading with transformers", path=out_dir)
