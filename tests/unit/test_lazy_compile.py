"""mcore/lazy_compile.py: torch.compile on a function's first call (no torch needed)."""

from __future__ import annotations

import pytest

from llmbuild.mcore.lazy_compile import lazy

pytestmark = pytest.mark.unit


class Module:
    pass


def recording():
    calls = []

    def real(model=None, **kwargs):
        calls.append((model, kwargs))
        return lambda *a, **k: ("compiled", model.__name__, a, k)

    return real, calls


def test_a_function_is_compiled_at_its_first_call_once_with_the_same_arguments():
    real, calls = recording()
    compile = lazy(real)

    def f(x):
        return x

    g = compile(f, dynamic=False)
    assert calls == []  # decorating compiles nothing
    assert g(1, k=2) == ("compiled", "f", (1,), {"k": 2})
    assert g(3) == ("compiled", "f", (3,), {})
    assert calls == [(f, {"dynamic": False})]
    assert g.__name__ == "f"


def test_the_decorator_form_with_arguments():
    real, calls = recording()
    compile = lazy(real)

    @compile(fullgraph=True)
    def h():
        return 0

    assert calls == []
    assert h()[0] == "compiled"
    assert calls == [(h.__wrapped__, {"fullgraph": True})]


def test_anything_but_a_function_goes_to_the_real_compile_at_once():
    seen = []
    compile = lazy(lambda model=None, **kw: seen.append(model) or model)
    m = Module()
    assert compile(m) is m
    assert seen == [m]
