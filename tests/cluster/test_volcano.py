"""Volcano Job manifests from the graph, validated offline: Volcano's CRD schema (shipped in
src/llmbuild/cluster/schemas/) and Kubernetes' own schemas (kubernetes-validate)."""

import copy
import json
import re
import shutil

import pytest
import yaml
from conftest import ROOT, snakemake_cmd

from llmbuild.cluster import validate as v
from llmbuild.cluster.volcano import write_manifests
from llmbuild.errors import UserError

pytestmark = pytest.mark.workflow
NPU = {
    "train": {"device": "npu", "nodes": 2, "tp": 4},
    "serve": {"device": "npu", "stack": "serve-vllm"},
}
GPU = {"train": {"device": "cuda"}, "serve": {"device": "cuda", "stack": "serve-vllm"}}


def generate(scratch, overlay):
    (scratch / "overlay.yaml").write_text(json.dumps(overlay))
    cmd = " ".join(snakemake_cmd(scratch))
    out = scratch / "manifests"
    files = write_manifests(
        out,
        ROOT / "profiles/volcano",
        cmd,
        ["config/config.yaml", str(scratch / "overlay.yaml")],
        [],
    )
    assert (out / "order.txt").read_text().split() == [f.name for f in files]
    return {f.name: list(yaml.safe_load_all(f.read_text())) for f in files}


def one(manifests, fragment):
    (name,) = [n for n in manifests if re.match(r"llmbuild-\d+" + re.escape(fragment), n)]
    return manifests[name]


def job_of(docs):
    (job,) = [d for d in docs if d["kind"] == "Job"]
    return job


def container(task):
    return task["template"]["spec"]["containers"][0]


@pytest.fixture(scope="module")
def npu(tmp_path_factory):
    d = tmp_path_factory.mktemp("npu")
    shutil.copytree(ROOT / "config", d / "config")
    shutil.copytree(ROOT / "envs", d / "envs")
    return generate(d, NPU)


def test_npu_training_is_a_gang_of_two_nodes_with_the_rank_table(npu):
    docs = one(npu, "-train-tiny-llama-sft")
    cm, job = docs[0], job_of(docs)
    assert (
        cm["kind"] == "ConfigMap"
        and cm["metadata"]["name"] == f"configmap1980-{job['metadata']['name']}"
    )
    spec = job["spec"]
    assert job["apiVersion"] == "batch.volcano.sh/v1alpha1"
    assert spec["minAvailable"] == 2 and spec["schedulerName"] == "volcano"
    assert [(t["name"], t["replicas"]) for t in spec["tasks"]] == [("master", 1), ("worker", 1)]
    assert spec["plugins"]["configmap1980"] == ["--rank-table-version=v2"]
    for task in spec["tasks"]:
        c = container(task)
        assert c["resources"]["limits"]["huawei.com/ascend-1980"] == "2"  # tp 4 over 2 nodes
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["RANK_TABLE_FILE"] == "/user/config/jobstart_hccl.json"
        cmd = c["args"][0]
        assert cmd.startswith("torchrun --nnodes 2 --nproc_per_node 2 --rdzv_backend c10d")
        assert '--rdzv_endpoint "${VC_MASTER_HOSTS%%,*}:29500"' in cmd
        assert "train run --mode sft" in cmd and "--device npu" in cmd and ".envs/" not in cmd
        assert c["image"].startswith(
            "swr.cn-southwest-2.myhuaweicloud.com/atelier/pytorch_2_3_ascend"
        )
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/mnt/sfs_turbo", "/user/config"} <= mounts
        assert c["workingDir"] == "/mnt/sfs_turbo/llmbuild"


def test_a_service_and_its_consumers_share_one_pod(npu):
    job = job_of(one(npu, "-serve-tiny-llama-sft-bench"))
    (task,) = job["spec"]["tasks"]
    c = container(task)
    cmd = c["args"][0]
    assert cmd.index("llmbuild serve run") < cmd.index("llmbuild bench static")
    assert "llmbuild bench dynamic" in cmd and "kill $svc" in cmd
    # the device plugin gives the pod its NPU: no server-side lease, no venv paths
    assert "lease" not in cmd and ".envs/" not in cmd
    assert c["resources"]["limits"]["huawei.com/ascend-1980"] == "1"
    assert job["spec"]["minAvailable"] == 1


def test_cpu_jobs_ask_for_no_accelerator(npu):
    for name in ("-tokenize-sft-", "-plot-bench-", "-gate-summary-"):
        job = job_of(one(npu, name))
        limits = container(job["spec"]["tasks"][0])["resources"]["limits"]
        assert set(limits) == {"cpu", "memory"}, (name, limits)


def test_jobs_come_in_dependency_order(npu):
    names = list(npu)
    steps = (
        "-tiny-model-",
        "-train-tiny-llama-pretrain",
        "-train-tiny-llama-sft",
        "-mg2hf-",
        "-quantize-",
        "-serve-tiny-llama-sft-w8a8-bench",
        "-plot-bench-",
        "-gate-summary-",
    )
    at = [names.index(next(n for n in names if re.match(r"llmbuild-\d+" + s, n))) for s in steps]
    assert at == sorted(at) and len(set(at)) == len(at)
    assert not any("-env-" in n for n in names)


def test_gpu_jobs_ask_for_nvidia_gpus(scratch):
    manifests = generate(scratch, GPU)
    for fragment in ("-train-tiny-llama-pretrain", "-serve-tiny-llama-base-eval"):
        job = job_of(one(manifests, fragment))
        limits = container(job["spec"]["tasks"][0])["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1 and "huawei.com/ascend-1980" not in limits
        assert "ring-controller.cce" not in job["metadata"]["labels"]


def test_validation_rejects_what_volcano_or_kubernetes_would(npu):
    job = job_of(one(npu, "-train-tiny-llama-sft"))
    v.validate(job)
    bad = copy.deepcopy(job)
    bad["spec"]["minAvailable"] = -1
    with pytest.raises(UserError, match=r"spec\.minAvailable: -1 is less than the minimum"):
        v.validate(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["tasks"][0]["name"] = "Master_0"
    with pytest.raises(UserError, match=r"spec\.tasks\.0\.name"):
        v.validate(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["minAvaliable"] = 2
    with pytest.raises(UserError, match="minAvaliable"):
        v.validate(bad)
    bad = copy.deepcopy(job)  # a pod-level mistake: only Kubernetes' schema knows containers
    container(bad["spec"]["tasks"][0])["volumeMounts"][0]["mountPath"] = 5
    with pytest.raises(UserError, match=r"tasks\.master\.template\.spec\.containers"):
        v.validate(bad)
    bad = copy.deepcopy(job)
    container(bad["spec"]["tasks"][0])["limit"] = {"cpu": "2"}  # strict: no unknown fields
    with pytest.raises(UserError, match="Kubernetes"):
        v.validate(bad)
    cm = one(npu, "-train-tiny-llama-sft")[0]
    v.validate(cm)
    bad = copy.deepcopy(cm)
    bad["data"] = {"jobstart_hccl.json": {"status": "x"}}
    with pytest.raises(UserError, match="ConfigMap"):
        v.validate(bad)
