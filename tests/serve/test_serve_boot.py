"""serve/boot.py without vLLM: a spawn request is answered by the preloaded fork server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from llmbuild.serve import boot

pytestmark = pytest.mark.unit

SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing, os, sys
    from llmbuild.serve import boot

    def report(path):
        with open(path, "w") as fh:
            json.dump({
                "ppid": os.getppid(),
                "late": os.environ.get("LLMBUILD_TEST_LATE"),
                "gone": os.environ.get("LLMBUILD_TEST_GONE"),
                "preloaded": "tabnanny" in sys.modules,
            }, fh)

    if __name__ == "__main__":
        routed = sys.argv[2] == "routed"
        os.environ["LLMBUILD_TEST_GONE"] = "set before the fork server started"
        if routed:
            assert boot.route_spawn_to_forkserver(("tabnanny",))
        os.environ["LLMBUILD_TEST_LATE"] = "set after"
        del os.environ["LLMBUILD_TEST_GONE"]
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=report, args=(sys.argv[1],))
        proc.start()
        proc.join(60)
        fork = multiprocessing.get_context("fork")
        print(json.dumps({"me": os.getpid(), "exitcode": proc.exitcode,
                          "context": type(ctx).__name__, "fork": type(fork).__name__}))
    """
)


def run(tmp_path, mode):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{mode}.json"
    done = subprocess.run(
        [sys.executable, str(script), str(out), mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), json.loads(out.read_text())


def test_a_spawn_request_gets_a_fork_server_child_with_the_parents_environment(tmp_path):
    parent, child = run(tmp_path, "routed")
    assert parent["exitcode"] == 0
    assert parent["context"] == "EngineContext"
    assert parent["fork"] == "ForkContext"  # only spawn is answered by the fork server
    assert child["ppid"] != parent["me"]  # forked by the fork server, not by us
    assert child["preloaded"]  # imported by the fork server before the fork
    # the environment as of start(), not as the fork server started with
    assert child["late"] == "set after"
    assert child["gone"] is None


def test_without_it_spawn_is_spawn(tmp_path):
    parent, child = run(tmp_path, "plain")
    assert parent["context"] == "SpawnContext"
    assert child["ppid"] == parent["me"]
    assert not child["preloaded"]
    assert child["late"] == "set after"


def test_a_preloaded_library_the_fork_lacks_is_named():
    with open("/proc/self/maps") as fh:
        mapped = next(line.split()[-1] for line in fh if ".so" in line)
    assert boot._missing_preloads(mapped) == []
    absent = "/nonexistent/libnothing.so"
    assert boot._missing_preloads(f"{mapped}:{absent}") == [absent]
    assert boot._missing_preloads("") == []
    assert os.path.exists(mapped)
