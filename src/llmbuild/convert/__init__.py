"""Hugging Face <-> megatron-core checkpoint conversion.

``cli`` (the ``convert`` verbs) -> ``checkpointer`` (the entry points) -> ``hf2mg``, ``mg2hf``,
``lora``, ``verify`` (the work) -> ``registry``, ``archs``, ``weights`` (the key maps: what
becomes what) and ``formats`` (the files: safetensors, torch_dist), over ``arrays`` (tensors as
numpy arrays, so that converting needs no torch).
"""
