"""Cluster wiring: the environment check every device job depends on, and the Slurm resources
of a multi-node training job."""

from __future__ import annotations

from typing import Any

from llmbuild.wiring.base import Base

# the stage whose `device` key a device job runs on
DEVICE_KEYS = {"train": "train.device", "serve": "serve.device"}


class ClusterWiring(Base):
    def device_checks(self) -> str:
        """Where the checks are: beside the environments (.envs/checks/, shared as they are:
        by every model's graph and by the audit's rebuild tree), or results/checks/ when the
        environments are external (envs.mode: external has no .envs/)."""
        if self.config["envs"]["mode"] == "external":
            return "results/checks/{device}.json"
        return ".envs/checks/{device}.json"

    def device_check(self, stage: str) -> str:
        """The check a device job of ``stage`` waits for (made on a node of the kind the job
        runs on; a node without the device stops there)."""
        return self.device_checks().format(device=self.device(stage))

    def device_key(self, wildcards: Any) -> str:
        """The config key the check names in its error line (train.device or serve.device)."""
        for key in DEVICE_KEYS.values():
            section, field = key.split(".")
            if self.config[section][field] == wildcards.device:
                return key
        return "train.device"

    def device(self, stage: str) -> str:
        section, field = DEVICE_KEYS[stage].split(".")
        return self.config[section][field]

    def device_count(self, stage: str) -> int:
        """Accelerators one job of ``stage`` holds (per node): a rank each for training, the
        tensor-parallel size for a service; none on cpu."""
        if self.device(stage) == "cpu":
            return 0
        if stage == "train":
            return max(self.train_ranks // self.config["train"]["nodes"], 1)
        return self.config["serve"]["tensor_parallel_size"]

    def device_resources(self, stage: str) -> dict[str, int]:
        """`gpu` (cuda) or `npu` resources of a device job: profiles/gpu and profiles/npu cap
        them at the server's device count; Slurm's executor turns `gpu` into --gpus and
        `gres` into --gres (per node: multi-node training)."""
        n = self.device_count(stage)
        if not n:
            return {}
        kind = "gpu" if self.device(stage) == "cuda" else "npu"
        if stage == "train" and self.config["train"]["nodes"] > 1:
            return {"gres": f"{kind}:{n}"}  # per node (Slurm's --gpus would be per job)
        if kind == "npu":  # Ascend Slurm clusters name the NPUs as a gres too
            return {"npu": n, "gres": f"npu:{n}"}
        return {"gpu": n}

    def device_lease(self, stage: str, stack: str) -> str:
        """The prefix that gives a device job its own devices on a shared server
        (llmbuild.cluster.lease sets CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES)."""
        n = self.device_count(stage)
        if not n or (stage == "train" and self.config["train"]["nodes"] > 1):
            return ""  # cpu, or a Slurm allocation whose gres assigns the devices
        python = (
            "python" if self.config["envs"]["mode"] == "external" else f".envs/{stack}/bin/python"
        )
        return f"{python} -m llmbuild.cluster.lease --device {self.device(stage)} --count {n} -- "

    def serve_launcher(self) -> str:
        """The serving stack's `llmbuild`, on its own devices when serving on an accelerator."""
        return self.device_lease("serve", self.serve_stack()) + self.llmbuild(self.serve_stack())

    def train_cluster_resources(self) -> dict[str, Any]:
        """The training job's devices; with train.nodes > 1 also that many nodes, one task
        (one torchrun) per node, and the executor's `mpi` resource so its job step runs our
        srun itself (launch.py)."""
        out: dict[str, Any] = dict(self.device_resources("train"))
        nodes = self.config["train"]["nodes"]
        if nodes > 1:
            out.update(nodes=nodes, tasks=nodes, mpi="srun")
        return out
