"""Mistral: Llama's weights; its sliding window is a model setting (``describe``), not a key."""

from __future__ import annotations

from llmbuild.convert.archs import ArchSpec, llama

MISTRAL = ArchSpec("mistral", ("MistralForCausalLM",), ("mistral",), llama.KEY_MAP, llama.hf_shapes)
