"""The checkpointer: conversion's entry points in one place (torchtune's word for what owns I/O).

    hf_to_megatron(hf_dir, out_dir, tp=, pp=, ...)       HF safetensors -> torch_dist (hf2mg)
    megatron_to_hf(load_dir, hf_source, out_dir, ...)     torch_dist -> complete HF dir (mg2hf)
    verify_hf_dir(out_dir, weights=)                      the transformers load check

and what they check before writing (``open_hf``, ``open_megatron``). The work is done in
``hf2mg``, ``mg2hf`` and ``verify``; the tensor logic is the key maps (``registry``, ``archs``,
``weights``) and the file formats are ``formats``.
"""

from __future__ import annotations

from llmbuild.convert.hf2mg import ConvertStats, HFSource, hf_to_megatron, open_hf
from llmbuild.convert.mg2hf import (
    MegatronSource,
    megatron_to_hf,
    megatron_to_hf_tensors,
    open_megatron,
)
from llmbuild.convert.verify import verify_hf_dir

__all__ = [
    "ConvertStats",
    "HFSource",
    "MegatronSource",
    "hf_to_megatron",
    "megatron_to_hf",
    "megatron_to_hf_tensors",
    "open_hf",
    "open_megatron",
    "verify_hf_dir",
]
