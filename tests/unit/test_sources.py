"""The source stamps' import closures, and the cache that spares parsing unchanged modules."""

from __future__ import annotations

import json

import pytest

from llmbuild import sources
from llmbuild.cli import GROUPS

pytestmark = pytest.mark.unit


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A planning process of its own, in an empty working directory."""

    def reset():
        for cached in (sources._imports, sources.closure, sources._digest, sources._stamp):
            cached.cache_clear()
        sources._parsed.clear()
        sources._parsed_new = False
        sources._parsed_loaded.clear()

    reset()
    monkeypatch.chdir(tmp_path)
    yield reset
    reset()


def stamps() -> dict[str, str]:
    return {g: (sources.Path.cwd() / sources.stamp(g)).read_text() for g in GROUPS}


def test_a_second_planning_parses_nothing_and_stamps_the_same(fresh, monkeypatch, tmp_path):
    first = stamps()
    cache = json.loads((tmp_path / sources.STAMP_DIR / sources.IMPORTS_CACHE).read_text())
    assert len(cache) > 50  # every module of every group's closure
    fresh()

    def no_parse(*args, **kwargs):
        raise AssertionError("an unchanged module was parsed again")

    monkeypatch.setattr(sources.ast, "parse", no_parse)
    assert stamps() == first


def test_an_edited_module_is_parsed_again(fresh, monkeypatch, tmp_path):
    module = tmp_path / "mod.py"
    module.write_text("import os\n")
    assert sources._imports(module, "llmbuild.mod") == frozenset()
    module.write_text("import os\n\n\ndef f():\n    from llmbuild.train import cli\n")
    sources._imports.cache_clear()  # a later planning, with the first version's entry
    sources._digest.cache_clear()
    assert sources._imports(module, "llmbuild.mod") == {"llmbuild.train", "llmbuild.train.cli"}
    # and the edited version is not parsed a third time
    sources._imports.cache_clear()
    sources._digest.cache_clear()
    monkeypatch.setattr(sources.ast, "parse", None)
    assert sources._imports(module, "llmbuild.mod") == {"llmbuild.train", "llmbuild.train.cli"}


def test_a_damaged_cache_is_ignored(fresh, tmp_path):
    first = stamps()
    fresh()
    (tmp_path / sources.STAMP_DIR / sources.IMPORTS_CACHE).write_text('{"x": 1')
    assert stamps() == first
    fresh()
    (tmp_path / sources.STAMP_DIR / sources.IMPORTS_CACHE).write_text('{"bad": [1, 2]}')
    assert stamps() == first
