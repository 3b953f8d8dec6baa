"""Volcano Job manifests (batch.volcano.sh/v1alpha1) for the graph's jobs, for Kubernetes
pools of Ascend NPUs (`huawei.com/ascend-1980`, as in the seeds' Volcano templates) or GPUs
(`nvidia.com/gpu`).

One manifest per unit of the plan (graph.units): a job, or a service with its consumers in
one pod (they meet on 127.0.0.1). Each pod runs the job's own command, as the rule would,
from the repository on the shared volume (results/ lives there), in the image of the job's
stack; files are numbered in dependency order (order.txt): apply one, wait for it to
complete, apply the next. Multi-node training (train.nodes > 1) is a job with a `master` and
a `worker` task, minAvailable = nodes, torchrun on each pod meeting at the master (svc
plugin); on Ascend the configmap1980 plugin fills the HCCL rank table (RANK_TABLE_FILE).
Settings (images per stack, namespace, queue, volume, devices per rule) come from the
profile's cluster.yaml (profiles/volcano/cluster.yaml).
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from llmbuild.cluster import graph, launch
from llmbuild.errors import UserError

RESOURCE = {"npu": "huawei.com/ascend-1980", "cuda": "nvidia.com/gpu"}
VISIBLE = {"npu": "ASCEND_RT_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES"}
SCRIPT_STACK = {"eval_summary": "bench"}
RANK_TABLE_DIR = "/user/config"
_STACK = re.compile(r"\.envs/([a-z0-9-]+)/bin/")
# a server's device lease (profiles/gpu, npu): in a pod the device plugin assigns the devices
_LEASE = re.compile(r"python -m llmbuild\.cluster\.lease .*? -- ")


def load_settings(profile: str | Path) -> dict[str, Any]:
    path = Path(profile) / "cluster.yaml"
    if not path.is_file():
        raise UserError("no cluster.yaml in the profile; copy profiles/volcano/", path=path)
    settings = yaml.safe_load(path.read_text()) or {}
    for key in ("namespace", "queue", "workdir", "mount", "volume_claim", "images"):
        if not settings.get(key):
            raise UserError(f"{key} is not set", path=path, field=key)
    settings["_path"] = str(path)
    return settings


def name_of(index: int, job: graph.Job) -> str:
    """A DNS-1123 label: llmbuild-<nn>-<rule>-<wildcard values>, at most 63 characters."""
    parts = [f"llmbuild-{index:02d}", job.rule, *job.wildcards.values()]
    slug = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower().replace("_", "-"))
    return slug[:63].strip("-")


def stack_of(job: graph.Job) -> str:
    found = _STACK.search(job.shell or "")
    return found.group(1) if found else SCRIPT_STACK.get(job.rule, "bench")


def device_of(job: graph.Job) -> str:
    found = re.search(r"--device (cpu|cuda|npu)\b", job.shell or "")
    return found.group(1) if found else "cpu"


def command_of(job: graph.Job, nodes: int = 1, ranks: int = 1) -> str:
    """The job's command with the tools on the image's PATH; a script rule runs through
    snakemake (the image of its stack carries it); multi-node training gets Volcano's
    torchrun launcher."""
    if job.shell is None:
        outs = " ".join(shlex.quote(o) for o in job.outputs)
        return (
            f"snakemake --cores {max(job.threads, 1)} --nolock --config envs='{{mode: external}}'"
            f" --allowed-rules {job.rule} {outs}"
        )
    cmd = _LEASE.sub("", _STACK.sub("", job.shell))
    if job.rule == "train" and nodes > 1:
        args = cmd[cmd.index(" -m llmbuild ") + len(" -m llmbuild ") :]
        cmd = f"{launch.volcano_torchrun('torchrun', nodes, ranks)} {args}"
    return cmd


def unit_command(unit: list[graph.Job], nodes: int, ranks: int) -> str:
    if not unit[0].service:
        return command_of(unit[0], nodes, ranks)
    serve = command_of(unit[0]).removeprefix("exec ")
    consumers = " && ".join(f"( {command_of(j)} )" for j in unit[1:])
    # the service in the background, its consumers in turn, then stop the service
    return f"( {serve} ) & svc=$!; trap 'kill $svc 2>/dev/null' EXIT; {consumers}"


def pod_template(
    s: dict[str, Any], unit: list[graph.Job], command: str, device: str, devices: int, name: str
) -> dict[str, Any]:
    job = unit[0]
    cpus = max(sum(max(j.threads, 1) for j in unit), 1)
    mem = sum(j.mem_mb for j in unit)
    limits: dict[str, str] = {"cpu": str(cpus), "memory": f"{mem}Mi"}
    requests = dict(limits)
    env = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    mounts = [
        {"name": "shared", "mountPath": s["mount"]},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "shared", "persistentVolumeClaim": {"claimName": s["volume_claim"]}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    labels = {"app": "llmbuild", "llmbuild/rule": job.rule.replace("_", "-")}
    if device in RESOURCE and devices:
        limits[RESOURCE[device]] = str(devices)
        requests[RESOURCE[device]] = str(devices)
    if device == "npu":
        labels["ring-controller.cce"] = "ascend-1980"
        env += [
            {"name": "RANK_TABLE_FILE", "value": f"{RANK_TABLE_DIR}/jobstart_hccl.json"},
            {"name": "HCCL_CONNECT_TIMEOUT", "value": "1200"},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ]
        mounts += [
            {"name": "ranktable", "mountPath": RANK_TABLE_DIR},
            {"name": "ascend-driver", "mountPath": "/usr/local/Ascend/driver", "readOnly": True},
            {"name": "npu-smi", "mountPath": "/usr/local/sbin/npu-smi", "readOnly": True},
        ]
        volumes += [
            {"name": "ranktable", "configMap": {"name": f"configmap1980-{name}"}},
            {"name": "ascend-driver", "hostPath": {"path": "/usr/local/Ascend/driver"}},
            {"name": "npu-smi", "hostPath": {"path": "/usr/local/sbin/npu-smi"}},
        ]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "main",
                "image": s["images"].get(stack_of(job)) or _missing_image(s, stack_of(job)),
                "imagePullPolicy": "IfNotPresent",
                "workingDir": s["workdir"],
                "command": ["/bin/sh", "-c"],
                "args": [command],
                "env": env,
                "resources": {"requests": requests, "limits": limits},
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    selector = (s.get("node_selector") or {}).get(device)
    if selector:
        spec["nodeSelector"] = dict(selector)
    return {"metadata": {"labels": labels}, "spec": spec}


def _missing_image(s: dict[str, Any], stack: str) -> str:
    raise UserError(f"no image for stack {stack!r}; add it", path=s["_path"], field="images")


def manifests(
    s: dict[str, Any], jobs: list[graph.Job], nodes: int, ranks: int
) -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, documents) per unit, in dependency order."""
    out = []
    per_rule = s.get("devices") or {}
    for index, unit in enumerate(graph.units(jobs), 1):
        job = unit[0]
        name = name_of(index, job)
        device = device_of(job)
        n = nodes if job.rule == "train" else 1
        devices = int(per_rule.get(job.rule, 0)) if device != "cpu" else 0
        if job.rule == "train" and device != "cpu":  # one device per rank on each node
            devices = launch.ranks_per_node(ranks, n)
        command = unit_command(unit, n, ranks)
        template = pod_template(s, unit, command, device, devices, name)
        tasks = [{"name": "master", "replicas": 1, "template": template}]
        if n > 1:  # the same pod on the other nodes, each with its own log
            worker = copy.deepcopy(template)
            worker["spec"]["containers"][0]["args"] = [
                re.sub(r" > (\S+) 2>&1$", r" > \1.worker-$VC_TASK_INDEX 2>&1", command)
            ]
            tasks.append({"name": "worker", "replicas": n - 1, "template": worker})
        plugins: dict[str, list[str]] = {"env": [], "svc": ["--publish-not-ready-addresses=true"]}
        labels = {"app": "llmbuild"}
        docs: list[dict[str, Any]] = []
        if device == "npu":
            plugins["configmap1980"] = ["--rank-table-version=v2"]
            labels["ring-controller.cce"] = "ascend-1980"
            docs.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": f"configmap1980-{name}"[:253],
                        "namespace": s["namespace"],
                        "labels": {"ring-controller.cce": "ascend-1980"},
                    },
                    "data": {"jobstart_hccl.json": '{"status": "initializing"}'},
                }
            )
        docs.append(
            {
                "apiVersion": "batch.volcano.sh/v1alpha1",
                "kind": "Job",
                "metadata": {"name": name, "namespace": s["namespace"], "labels": labels},
                "spec": {
                    "schedulerName": s.get("scheduler", "volcano"),
                    "queue": s["queue"],
                    "minAvailable": n,
                    "maxRetry": int(s.get("max_retry", 1)),
                    "policies": [{"event": "PodEvicted", "action": "RestartJob"}],
                    "plugins": plugins,
                    "tasks": tasks,
                },
            }
        )
        out.append((name, docs))
    return out


def write_manifests(
    output: str | Path, profile: str, snakemake: str, configfiles: list[str], targets: list[str]
) -> list[Path]:
    """Plan the graph, write one YAML file per unit and order.txt; validate them all first."""
    from llmbuild.cluster.validate import validate

    settings = load_settings(profile)
    text = graph.plan(snakemake, configfiles, targets, [])
    jobs = [j for j in graph.parse_plan(text) if j.rule != "env"]
    train = next((j for j in jobs if j.rule == "train"), None)
    nodes = int(train.resources.get("nodes", "1")) if train else 1
    ranks = _ranks(train.shell or "") if train else 1
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, docs in manifests(settings, jobs, nodes, ranks):
        for doc in docs:
            validate(doc)
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        written.append(path)
    (out / "order.txt").write_text("".join(f"{p.name}\n" for p in written))
    return written


def _ranks(shell: str) -> int:
    """tp * pp of a train command (its --tp and --pp flags; 1 when absent)."""
    tp = re.search(r"--tp (\d+)", shell)
    pp = re.search(r"--pp (\d+)", shell)
    return (int(tp.group(1)) if tp else 1) * (int(pp.group(1)) if pp else 1)
