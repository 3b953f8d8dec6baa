"""Quantization with llm-compressor: the schemes of :mod:`llmbuild.quantize.schemes` (SmoothQuant
W8A8 with its scales as their own file, W8A16, W4A16 by GPTQ or AWQ, calibrated KV caches).

The heavy stack (torch, transformers, llmcompressor) is imported only inside
:mod:`llmbuild.quantize.run`, :mod:`llmbuild.quantize.smoothquant` and
:mod:`llmbuild.quantize.scales`' functions; :mod:`schemes`, :mod:`spec` and :mod:`calib` are
pure and importable anywhere.
"""
