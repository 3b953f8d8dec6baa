"""torch.compile on first call, not at decoration, for the functions megatron-core decorates.

megatron-core wraps its fused kernels (bias-GeLU/GeGLU/SwiGLU, ...) in ``torch.compile`` as
it imports them (megatron.core.jit.jit_fuser), and building torch.compile's Inductor wrapper
imports TorchInductor: about 2.3 s of the ~6 s every process pays to import megatron.core on
2 cores, though llmbuild turns those fusions off (mcore/model.py: they are CUDA kernels) and
never calls them. Before megatron.core is first imported, ``torch.compile`` is replaced by a
wrapper that, for a plain function, compiles it at its first call with the same arguments
(what the real decorator's result does anyway: torch.compile traces and compiles lazily);
anything else (a module, a call without a function) goes to the real torch.compile at once.

install() adds a meta-path finder that does this when megatron.core is about to be imported,
so importing llmbuild.mcore stays torch-free (the driver plans with it).
"""

from __future__ import annotations

import functools
import importlib.abc
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any


def lazy(real: Callable[..., Any]) -> Callable[..., Any]:
    """``real`` (torch.compile) made lazy for plain functions."""

    @functools.wraps(real)
    def compile(model: Any = None, **kwargs: Any) -> Any:
        if model is None:  # @torch.compile(...) with arguments
            return lambda fn: compile(fn, **kwargs)
        if not inspect.isfunction(model):
            return real(model, **kwargs)
        compiled: Callable[..., Any] | None = None

        @functools.wraps(model)
        def call(*args: Any, **kw: Any) -> Any:
            nonlocal compiled
            if compiled is None:
                compiled = real(model, **kwargs)
            return compiled(*args, **kw)

        return call

    compile.__lazy__ = True  # type: ignore[attr-defined]
    return compile


def make_lazy() -> None:
    """Replace torch.compile by lazy(torch.compile), once."""
    import torch

    if not getattr(torch.compile, "__lazy__", False):
        torch.compile = lazy(torch.compile)


class _BeforeMegatron(importlib.abc.MetaPathFinder):
    """Finds nothing; the first time megatron.core is looked for, makes torch.compile lazy."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: Any = None
    ) -> None:
        if fullname == "megatron.core":  # asked only while it is not imported
            uninstall()
            try:
                make_lazy()
            except ImportError:  # no torch: megatron's own import will say so
                pass
        return None


_FINDER = _BeforeMegatron()


def install() -> None:
    if _FINDER not in sys.meta_path and "megatron.core" not in sys.modules:
        sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
