"""Slurm planning: the profile's partition and node count are checked against the cluster
before any job (one line each), and multi-node training's launch command, run against a
2-node allocation description with stand-in Slurm tools, starts torchrun on both nodes with a
c10d rendezvous on the first."""

import os
import re
import subprocess

import pytest
from conftest import ROOT, error_lines, plan, tool

from llmbuild.cluster import graph, launch, slurm
from llmbuild.errors import UserError

pytestmark = pytest.mark.workflow
PROFILE = ["--profile", str(ROOT / "profiles" / "slurm")]


def sinfo(bindir, partitions):
    """A stand-in cluster: sinfo lists ``partitions``; squeue is there (the Slurm executor
    plugin refuses to start on a host with neither squeue nor sacct)."""
    lines = "\\n".join(f"{p} {n}" for p, n in partitions.items())
    tool(bindir, "sinfo", f'printf "{lines}\\n"')
    tool(bindir, "squeue", "exit 0")


def test_partitions_from_sinfo():
    assert slurm.partitions("cpu 3\ncpu 1\ngpu 2\n") == {"cpu": 4, "gpu": 2}
    with pytest.raises(UserError, match="partition 'a100' does not exist .*sinfo lists: cpu, gpu"):
        slurm.check_partition("a100", 1, "p.yaml", "c.yaml", sinfo=lambda: "cpu 4\ngpu 2\n")


def test_more_nodes_than_the_partition_has(tmp_path, scratch):
    sinfo(tmp_path / "bin", {"llmbuild": 1})
    proc = plan(scratch, {"train": {"nodes": 2, "tp": 2}}, *PROFILE, path_first=tmp_path / "bin")
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line == (
        "llmbuild: error: overlay.yaml: train.nodes: 2 nodes asked but partition 'llmbuild' has "
        "1; lower train.nodes or set a bigger partition for the train rule (set-resources)"
    )


def test_a_missing_partition(tmp_path, scratch):
    sinfo(tmp_path / "bin", {"cpu": 4, "gpu": 2})
    proc = plan(scratch, {}, *PROFILE, path_first=tmp_path / "bin")
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line.startswith(
        f"llmbuild: error: {ROOT}/profiles/slurm/config.yaml: default-resources.slurm_partition: "
        "partition 'llmbuild' does not exist on this cluster (sinfo lists: cpu, gpu)"
    )


def test_ranks_must_split_over_the_nodes(scratch):
    proc = plan(scratch, {"train": {"nodes": 2, "tp": 1}})
    (line,) = error_lines(proc)
    assert line.startswith(
        "llmbuild: error: overlay.yaml: train.nodes: 1 ranks (tp * pp * dp) do not split over "
        "2 nodes"
    )


@pytest.fixture
def two_nodes(tmp_path, scratch):
    """The train job of a 2-node plan: its resources and shell command."""
    sinfo(tmp_path / "bin", {"llmbuild": 2})
    proc = plan(
        scratch, {"train": {"nodes": 2, "tp": 2, "pp": 2}}, *PROFILE, path_first=tmp_path / "bin"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = graph.parse_plan(proc.stdout)
    (job,) = [j for j in jobs if j.rule == "train" and j.wildcards["phase"] == "pretrain"]
    return {**job.resources, "threads": job.threads}, job.shell


def test_the_train_job_asks_slurm_for_two_nodes(two_nodes):
    resources, shell = two_nodes
    assert resources["nodes"] == resources["tasks"] == "2" and resources["mpi"] == "srun"
    assert resources["slurm_partition"] == "llmbuild"
    assert " srun --overlap --nodes 2 --ntasks 2 --ntasks-per-node 1 " in shell
    assert ".envs/train/bin/torchrun --nnodes 2 --nproc_per_node 2 --rdzv_backend c10d" in shell
    assert "--standalone" not in shell
    # each rank gets the node's threads shared by its 2 ranks
    threads = int(re.search(r"--threads (\d+) ", shell)[1])
    assert resources["threads"] == 4 and threads == 2, (threads, resources)


@pytest.mark.parametrize("device,gres", [("cuda", "gpu:4"), ("npu", "npu:4")])
def test_multi_node_devices_are_asked_per_node(tmp_path, scratch, device, gres):
    sinfo(tmp_path / "bin", {"llmbuild": 2})
    overlay = {"train": {"nodes": 2, "tp": 4, "pp": 2, "device": device}}
    proc = plan(scratch, overlay, *PROFILE, path_first=tmp_path / "bin")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = graph.parse_plan(proc.stdout)
    for job in (j for j in jobs if j.rule == "train"):
        assert job.resources["gres"] == gres and "gpu" not in job.resources
        assert "--nproc_per_node 4" in job.shell and "lease" not in job.shell


@pytest.mark.parametrize("nodelist_env", [True, False])
def test_the_launch_command_on_a_two_node_allocation(tmp_path, two_nodes, nodelist_env):
    """Run the job's launcher as the job's shell would, inside a described 2-node allocation
    (node[07-08]); srun runs the command once per node, as Slurm does."""
    _, shell = two_nodes
    bindir = tmp_path / "slurm-bin"
    tool(
        bindir,
        "scontrol",
        '[ "$1 $2" = "show hostnames" ] && [ "$3" = "node[07-08]" ] && printf "node07\\nnode08\\n"',
    )
    tool(bindir, "squeue", 'echo "node[07-08]"')
    tool(bindir, "srun", 'for n in node07 node08; do echo "$n: $*"; done')
    (tmp_path / ".envs/train/bin").mkdir(parents=True)
    tool(tmp_path / ".envs/train/bin", "torchrun", 'echo "torchrun $*"')
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "SLURM_JOB_ID": "4242"}
    if nodelist_env:
        env["SLURM_JOB_NODELIST"] = "node[07-08]"
    launcher = shell.split(" train run ")[0]
    proc = subprocess.run(
        ["bash", "-c", launcher + " train run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["node07", "node08"]
    for ln in lines:
        assert "--nnodes 2 --nproc_per_node 2 --rdzv_backend c10d" in ln
        assert "--rdzv_endpoint node07:29500 --rdzv_id llmbuild-4242 -m llmbuild train run" in ln


def test_launch_strings():
    assert launch.ranks_per_node(8, 2) == 4
    with pytest.raises(UserError, match="train.nodes: 6 ranks"):
        launch.ranks_per_node(6, 4)
    cmd = launch.volcano_torchrun("torchrun", 4, 32)
    assert cmd.startswith("torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d")
    assert os.path.basename(cmd.split()[-1]) == "llmbuild"
