import json
import os

import pytest

from llmbuild import provenance
from llmbuild.atomic import atomic_dir, atomic_file
from llmbuild.envs.venv import parse_spec
from llmbuild.errors import UserError

pytestmark = pytest.mark.unit


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("killed")
    assert not final.exists() and os.listdir(tmp_path) == []
    with atomic_dir(final) as tmp:
        (tmp / "whole").write_text("y")
    assert (final / "whole").read_text() == "y" and len(os.listdir(tmp_path)) == 1


def test_atomic_file_replaces_only_on_success(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    with pytest.raises(ValueError):
        with atomic_file(f) as fh:
            fh.write("new")
            raise ValueError
    assert f.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_provenance_records_inputs_and_redacts_secrets(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_text("data")
    art = tmp_path / "art"
    art.mkdir()
    (art / "w.bin").write_bytes(b"123")
    provenance.write(
        art, command="x y", args={"api_key": "sk-secret", "n": 3}, inputs=[inp], started=0.0
    )
    rec = json.loads((art / "provenance.json").read_text())
    assert rec["arguments"] == {"api_key": "<redacted>", "n": 3}
    assert rec["inputs"][str(inp)] == provenance.file_digest(inp)
    assert "sk-secret" not in (art / "provenance.json").read_text()
    assert rec["output_digest"] == provenance.path_digest(art)
    assert {"code", "packages", "host", "wall_seconds"} <= set(rec)
    # the record itself is not part of the content digest
    before = provenance.path_digest(art)
    (art / "provenance.json").write_text("{}")
    assert provenance.path_digest(art) == before


def test_env_spec_must_be_pinned(tmp_path):
    spec = tmp_path / "s.txt"
    spec.write_text("torch==2.13.0\n# post: pip uninstall -y torchvision\nnumpy>=1\n")
    with pytest.raises(UserError, match=r"s.txt:3: 'numpy>=1' is not pinned"):
        parse_spec(spec)
    spec.write_text("torch==2.13.0\n# post: pip uninstall -y torchvision\n")
    parsed = parse_spec(spec)
    assert parsed.requirements == ("torch==2.13.0",)
    assert parsed.post == ("pip uninstall -y torchvision",)
