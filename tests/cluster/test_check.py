"""The environment check before device jobs: facts when the device is there, one line and a
non-zero exit when it is not; and every device job of the graph waits for it."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, plan, tool

from llmbuild.cluster import check, graph
from llmbuild.errors import UserError

pytestmark = pytest.mark.unit

NVIDIA = "0, NVIDIA H200, 143771, 570.86.15\n1, NVIDIA H200, 143771, 570.86.15\n"
NPU_SMI = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.6                   Version: 23.0.6                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 93.6        36                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3161 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | OK            | 89.1        35                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3160 / 65536         |
+===========================+===============+====================================================+
"""


def test_cpu_facts_from_proc():
    cpuinfo = (
        "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx avx2 amx_tile amx_int8\n"
    )
    facts = check.cpu_facts(cpuinfo, "MemTotal:       24683520 kB\n", 2)
    assert facts == {
        "model": "Intel Xeon",
        "isa": ["avx", "avx2", "amx_tile", "amx_int8"],
        "cores": 2,
        "mem_gib": 23.5,
    }


def test_device_tables_parse():
    assert [g["name"] for g in check.parse_nvidia_smi(NVIDIA)] == ["NVIDIA H200"] * 2
    assert check.parse_nvidia_smi(NVIDIA)[1] == {
        "index": 1,
        "name": "NVIDIA H200",
        "mem_mib": 143771,
        "driver": "570.86.15",
    }
    assert check.parse_npu_smi(NPU_SMI) == [
        {"index": 0, "name": "910B3", "health": "OK"},
        {"index": 1, "name": "910B3", "health": "OK"},
    ]


def test_a_node_without_the_device_stops_with_one_line(tmp_path):
    env = {"PATH": str(tmp_path)}  # no nvidia-smi, no npu-smi
    with pytest.raises(UserError) as exc:
        check.check("cuda", "train.device", env=env, host="n1")
    assert str(exc.value) == (
        "train.device: no cuda device on node n1: nvidia-smi not found; run device jobs where "
        "the device is (the profile's partition / gres) or set train.device: cpu"
    )


def test_devices_found_and_restricted_to_the_visible_ones(tmp_path):
    tool(tmp_path, "nvidia-smi", f"printf '{NVIDIA}'")
    tool(tmp_path, "npu-smi", "cat <<'EOF'\n" + NPU_SMI + "EOF")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}

    def run(cmd):  # the tool from tmp_path, as the check would find it on PATH
        cmd = [str(tmp_path / cmd[0]), *cmd[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout

    facts = check.check("cuda", "train.device", run=run, env=env)
    assert [d["index"] for d in facts["devices"]] == [0, 1]
    env["ASCEND_RT_VISIBLE_DEVICES"] = "1"
    facts = check.check("npu", "serve.device", run=run, env=env)
    assert [d["index"] for d in facts["devices"]] == [1]
    env["ASCEND_RT_VISIBLE_DEVICES"] = "5"
    with pytest.raises(
        UserError,
        match=r"serve.device: no npu device on node .*lists none \(ASCEND_RT_VISIBLE_DEVICES=5\)",
    ):
        check.check("npu", "serve.device", run=run, env=env)


def test_cli_line_and_exit_code(tmp_path):
    out = tmp_path / "cuda.json"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), PYTHONPATH=str(ROOT / "src"))
    cmd = [
        sys.executable,
        "-m",
        "llmbuild",
        "cluster",
        "check",
        "--device",
        "cuda",
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(
        "llmbuild cluster check: error: train.device: no cuda device on node"
    )
    cmd[cmd.index("cuda")] = "cpu"
    assert subprocess.run(cmd, capture_output=True, env=env).returncode == 0
    assert json.loads(out.read_text())["cpu"]["cores"] >= 1


@pytest.mark.workflow
def test_every_device_job_waits_for_its_check(scratch):
    proc = plan(scratch, {"train": {"device": "cuda"}, "serve": {"device": "npu"}})
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = graph.parse_plan(proc.stdout)
    train = [j for j in jobs if j.rule == "train"]
    serve = [j for j in jobs if j.rule == "serve"]
    assert len(train) == 2 and len(serve) == 5  # 3 evaluated, 2 benchmarked
    assert all(".envs/checks/cuda.json" in j.inputs for j in train)
    assert all(".envs/checks/npu.json" in j.inputs for j in serve)
    checks = [j.outputs[0] for j in jobs if j.rule == "device_check"]
    assert sorted(checks) == [
        ".envs/checks/cuda.json",
        ".envs/checks/npu.json",
    ]
    assert "--key serve.device" in proc.stdout and "--key train.device" in proc.stdout


@pytest.mark.workflow
def test_the_graph_stops_at_the_check_on_a_node_without_the_device(scratch):
    """The real check through Snakemake: training on cuda here fails at device_check in
    seconds with its one line, and training never starts."""
    overlay = {"train": {"device": "cuda"}, "envs": {"mode": "external"}}
    (scratch / "overlay.yaml").write_text(json.dumps(overlay))
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:/usr/bin:/bin")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(scratch),
        "--cores",
        "1",
        "results/checks/cuda.json",  # external environments: no .envs/
        "--configfile",
        "config/config.yaml",
        "overlay.yaml",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=scratch, timeout=300)
    assert proc.returncode != 0
    log = (scratch / "logs/checks/cuda.log").read_text().splitlines()
    assert len(log) == 1 and log[0].startswith(
        "llmbuild cluster check: error: train.device: no cuda device"
    )
    assert "Error in rule device_check" in proc.stdout + proc.stderr
    assert not (scratch / "results/checks/cuda.json").exists()
