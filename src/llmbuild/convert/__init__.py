"""Hugging Face <-> megatron-core checkpoint conversion."""
