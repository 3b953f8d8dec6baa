"""One server's devices shared by concurrent jobs (profiles/gpu, profiles/npu): every device
job holds its own devices, so two jobs never share one and a service runs on its own."""

import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT, plan, tool

from llmbuild.cluster import graph

pytestmark = pytest.mark.unit
GPUS = "0, NVIDIA L40S, 46068, 570.86.15\\n1, NVIDIA L40S, 46068, 570.86.15\\n"


@pytest.fixture
def server(tmp_path):
    """A 2-GPU server: nvidia-smi on PATH, a lock directory."""
    tool(tmp_path / "bin", "nvidia-smi", f"printf '{GPUS}'")
    env = dict(
        os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", PYTHONPATH=str(ROOT / "src")
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env, tmp_path / "locks"


def lease(env, locks, count, command, timeout=30.0):
    cmd = [
        sys.executable,
        "-m",
        "llmbuild.cluster.lease",
        "--device",
        "cuda",
        "--count",
        str(count),
        "--lock-dir",
        str(locks),
        "--timeout",
        str(timeout),
        "--",
        "sh",
        "-c",
        command,
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_jobs_get_different_gpus_and_a_third_waits(server):
    env, locks = server
    a = lease(env, locks, 1, 'echo "$CUDA_VISIBLE_DEVICES"; sleep 3')
    b = lease(env, locks, 1, 'echo "$CUDA_VISIBLE_DEVICES"; sleep 3')
    time.sleep(1.5)
    c = lease(env, locks, 1, "echo $CUDA_VISIBLE_DEVICES", timeout=0.5)
    out_c, err_c = c.communicate(timeout=30)
    assert c.returncode == 2 and out_c == ""
    assert err_c.splitlines() == [
        f"llmbuild cluster lease: error: cuda devices: no 1 free cuda devices after 0s (locks in "
        f"{locks}); the profile's resources allow more device jobs at once than the server has"
    ]
    got = sorted(p.communicate(timeout=30)[0].strip() for p in (a, b))
    assert got == ["0", "1"]
    d = lease(env, locks, 2, 'echo "$CUDA_VISIBLE_DEVICES"')  # both free again once they exit
    assert d.communicate(timeout=30)[0].strip() == "0,1"


def test_more_gpus_than_the_server_has(server):
    env, locks = server
    p = lease(env, locks, 3, "true")
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert "3 cuda devices asked but this server has 2 (0,1)" in err


def test_devices_a_scheduler_assigned_are_the_pool(server):
    env, locks = server
    env["CUDA_VISIBLE_DEVICES"] = "1"
    p = lease(env, locks, 1, 'echo "$CUDA_VISIBLE_DEVICES"')
    assert p.communicate(timeout=30)[0].strip() == "1"


@pytest.mark.workflow
@pytest.mark.parametrize("device,resource,visible", [("cuda", "gpu", "gpu"), ("npu", "npu", "npu")])
def test_device_jobs_run_under_a_lease_on_the_server_profiles(scratch, device, resource, visible):
    overlay = {
        "train": {"device": device, "tp": 2},
        "serve": {"device": device, "stack": "serve-vllm"},
    }
    proc = plan(scratch, overlay, "--profile", str(ROOT / "profiles" / visible))
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = graph.parse_plan(proc.stdout)
    for job in jobs:
        if job.rule == "train":
            assert job.resources[resource] == "2"
            assert job.shell.startswith(
                f".envs/train/bin/python -m llmbuild.cluster.lease --device {device} --count 2 -- "
                ".envs/train/bin/torchrun --standalone --nproc_per_node 2 -m llmbuild train run"
            )
        elif job.rule == "serve":
            assert job.resources[resource] == "1"
            assert job.shell.startswith(
                f"exec .envs/serve-vllm/bin/python -m llmbuild.cluster.lease --device {device} "
                "--count 1 -- .envs/serve-vllm/bin/llmbuild serve run"
            )
        else:  # nothing else holds a device
            assert resource not in job.resources and "lease" not in (job.shell or ""), job.rule
    assert {j.rule for j in jobs} >= {"train", "serve", "device_check"}
