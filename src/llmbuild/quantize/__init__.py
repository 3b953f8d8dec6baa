"""Quantization with llm-compressor: SmoothQuant W8A8, weight-only W8A16 / W4A16.

The heavy stack (torch, transformers, llmcompressor) is imported only inside
:mod:`llmbuild.quantize.smoothquant` and :mod:`llmbuild.quantize.scales`; :mod:`spec` and
:mod:`calib` are pure and importable anywhere.
"""
