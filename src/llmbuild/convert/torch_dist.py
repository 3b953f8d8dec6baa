"""The old import path of ``TorchDistReader``, for src/llmbuild/gates/parity.py and
tests/convert/test_parity_gate.py; the format lives in ``llmbuild.convert.formats``
(``torch_dist``, ``torch_dist_reader``). Delete this file when they import from there."""

from llmbuild.convert.formats.torch_dist_reader import TorchDistReader

__all__ = ["TorchDistReader"]
