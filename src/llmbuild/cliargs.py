"""Argument types every CLI shares, so each kind of value is written one way.

Value lists are comma-separated (``--concurrency 1,2,4``, ``--request-rate 1,4,inf``); lists of
files are given as separate words (``nargs="+"``). Standard library only.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any


def _list_of(kind: Callable[[str], Any], what: str, *, positive: bool = False) -> Callable:
    def parse(text: str) -> tuple:
        parts = [p.strip() for p in str(text).split(",")]
        if not parts or any(not p for p in parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        try:
            values = tuple(kind(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None
        if positive and any(not v > 0 or (isinstance(v, float) and math.isnan(v)) for v in values):
            raise argparse.ArgumentTypeError(f"every value must be > 0, got {text!r}")
        return values

    parse.__name__ = f"comma-separated {what}"
    return parse


#: ``1,2,4`` -> (1, 2, 4)
int_list = _list_of(int, "integers")
#: ``1,2,4`` -> (1, 2, 4), each >= 1
positive_int_list = _list_of(int, "integers", positive=True)
#: ``0.5,1,inf`` -> (0.5, 1.0, inf)
float_list = _list_of(float, "numbers")
#: ``0.5,1,inf`` -> (0.5, 1.0, inf), each > 0
positive_float_list = _list_of(float, "numbers", positive=True)
