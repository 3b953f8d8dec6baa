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


def test_digester_matches_path_digest_and_covers_every_file(tmp_path):
    """Digests computed by threads while a file grows equal digests of the finished files;
    a file cut shorter than reported is left to be hashed again; hidden content files count."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(3 << 20))
    (src / "b.txt").write_text("b")
    out = tmp_path / "out"
    out.mkdir()
    with provenance.Digester() as d:
        d.inputs([src, tmp_path / "missing"])
        with (out / "big.bin").open("wb") as f:
            for _ in range(5):
                f.write(os.urandom(3 << 20))
                f.flush()
                d.written(out / "big.bin", f.tell())
        with (out / "rewritten.bin").open("wb") as f:
            f.write(b"x" * 100)
            f.flush()
            d.written(out / "rewritten.bin", f.tell())
            f.truncate(50)  # shorter than reported: the stream digest is not used
        (out / ".metadata").write_bytes(b"hidden but content")
        (out / ".snakemake_timestamp").write_text("")
        inputs, known = d.input_digests(), d.output_digests(out)
    assert inputs == {str(src): provenance.path_digest(src)}
    assert "big.bin" in known  # and what it knows is right (the cut file: right or absent)
    assert all(v == provenance.file_digest(out / k) for k, v in known.items())
    provenance.write(
        out, command="t", args={}, inputs=[src], started=0, input_digests=inputs, known=known
    )
    rec = json.loads((out / "provenance.json").read_text())
    assert rec["output_digest"] == provenance.path_digest(out)
    assert rec["inputs"] == {str(src): provenance.path_digest(src)}
    # .metadata is part of the content; Snakemake's marker and the record are not
    before = provenance.path_digest(out)
    (out / ".metadata").write_bytes(b"changed")
    assert provenance.path_digest(out) != before
    (out / ".snakemake_timestamp").write_text("1")
    (out / ".metadata").write_bytes(b"hidden but content")
    assert provenance.path_digest(out) == before


def test_test_modules_of_one_pytest_run_have_distinct_names():
    """pytest (rootdir import mode) refuses two test files of one name in one run: each run of
    `make test` (the driver's, each stack's, the end-to-end one) holds distinct names."""
    import re
    from collections import Counter
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    makefile = (root / "Makefile").read_text()
    runs = [m.split() for m in re.findall(r"^TESTS_\w+ := (.+)$", makefile, re.M)]
    runs += [m.split() for m in re.findall(r'-m "[^"]*" ((?:tests/\w+ ?)+)$', makefile, re.M)]
    assert len(runs) >= 5, runs
    for dirs in runs:
        names = Counter(p.name for d in dirs for p in (root / d).rglob("test_*.py"))
        assert not [n for n, c in names.items() if c > 1], (dirs, names.most_common(3))


def test_pip_settings_reach_uv(tmp_path):
    from llmbuild.envs.venv import uv_flags

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    listed = "\n".join(
        [
            f"global.find-links='{wheels}'",
            f":env:.find-links='{wheels}'",  # the same, from PIP_FIND_LINKS: once
            f"global.constraint='{tmp_path / 'missing.txt'}'",  # absent: left out
            f"global.extra-index-url='file://{tmp_path} file:///nowhere/simple'",
            "global.cert='/etc/ssl/certs/ca-certificates.crt'",  # not an index setting
            "global.index-url='https://mirror.example/simple'",
        ]
    )
    assert uv_flags(listed) == [
        "--index-strategy",
        "unsafe-best-match",
        "--find-links",
        str(wheels),
        "--extra-index-url",
        f"file://{tmp_path}",
        "--index-url",
        "https://mirror.example/simple",
    ]


ENSUREPIP = {"pip", "setuptools", "pkg_resources", "_distutils_hack"}


def test_environments_carry_compiled_bytecode():
    """Every installed module has its bytecode beside it (uv's --compile-bytecode, pip's
    default): where Python may not write it (PYTHONDONTWRITEBYTECODE), each job would compile
    torch, transformers or vLLM again. Only imported modules would have it otherwise."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    prefixes = [root / ".venv"]
    prefixes += [p.parent for p in sorted((root / ".envs").glob("*/ready.json"))]
    checked = 0
    for prefix in prefixes:
        for site in prefix.glob("lib/python3.*/site-packages"):
            tag = "cpython-" + site.parent.name.removeprefix("python").replace(".", "")
            # venv's own pip and setuptools come compiled by ensurepip: the installer's count
            sources = [
                p
                for p in site.rglob("*.py")
                if p.relative_to(site).parts[0] not in ENSUREPIP and "__editable__" not in p.name
            ]
            compiled = [
                p for p in sources if (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").exists()
            ]
            assert len(compiled) >= 0.95 * len(sources), (str(prefix), len(compiled), len(sources))
            checked += 1
    if not checked:
        pytest.skip("no environment here yet (make setup)")
