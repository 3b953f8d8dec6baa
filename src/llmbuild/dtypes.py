"""The floating-point dtypes model weights are stored, trained and served in: one list.

``--dtype`` of conversion (``convert hf2mg``/``mg2hf``), megatron-core's model config and the
server (``serve``, which adds ``auto``) all choose from ``DTYPES``. Standard library only.
"""

from __future__ import annotations

from llmbuild.errors import UserError

#: torch's names (``torch.bfloat16`` -> "bfloat16"), full precision first.
DTYPES = ("float32", "bfloat16", "float16")


def check(dtype: str, *, field: str = "--dtype", path: object = None) -> str:
    """``dtype`` if it is one of ``DTYPES``, else one UserError line naming the choices."""
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r}; use one of {', '.join(DTYPES)}", path=path, field=field)
    return dtype
