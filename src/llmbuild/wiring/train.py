"""The train stage's wiring: the launcher (one process or torchrun), its inputs and each phase's
flags.
"""

from __future__ import annotations

from typing import Any

from llmbuild import plan
from llmbuild.cluster import launch
from llmbuild.wiring.base import Base, cli_flags

PHASE_KEYS = (
    "iters",
    "lr",
    "min_lr",
    "warmup_iters",
    "micro_batch_size",
    "global_batch_size",
    "seq_length",
    "weight_decay",
    "seed",
)


class TrainWiring(Base):
    def train_launcher(self) -> str:
        """The train stack's `llmbuild`, or with tp * pp * dp > 1 torchrun starting one
        `llmbuild` per rank; with train.nodes > 1, srun starting torchrun on each node of
        the Slurm allocation (llmbuild.cluster.launch)."""
        nodes = self.config["train"]["nodes"]
        lease = self.device_lease("train", "train")  # type: ignore[attr-defined]
        if self.train_ranks == 1 and nodes == 1:
            return lease + self.llmbuild("train")
        exe = "torchrun"
        if self.config["envs"]["mode"] != "external":
            exe = ".envs/train/bin/torchrun"
        if nodes > 1:
            return launch.slurm_torchrun(exe, nodes, self.train_ranks)
        return f"{lease}{exe} --standalone --nproc_per_node {self.train_ranks} -m llmbuild"

    def train_threads(self) -> int:
        """A training job's threads: one per rank, at least 2."""
        return max(2, self.train_ranks)

    def train_mem_mb(self) -> int:
        return 6000 * self.train_ranks

    def train_rank_threads(self, wildcards: Any, threads: int) -> int:
        """`--threads` of each rank: the job's threads shared out, at least 1 per rank."""
        n = self.train_ranks // self.config["train"]["nodes"]
        return max(1, threads // max(1, n))

    def train_inputs(self, wildcards: Any) -> dict[str, str]:
        """The checkpoint a phase starts from, the proof of that checkpoint, its shards."""
        prev = plan.previous_phase(self.config, wildcards.phase)
        if prev == "base":
            proof = self.parity_gate(wildcards.model, "base")
        else:
            proof = self.gate_path(wildcards.model, "train", prev)
        return {
            "load": f"results/{wildcards.model}/{prev}/mcore",
            "proof": proof,
            "data": f"results/{wildcards.model}/shards/{wildcards.phase}",
        }

    def phase_flags(self, wildcards: Any) -> str:
        """The phase's knobs; `iters` is the command's `--train-iters`."""
        keys = PHASE_KEYS + (("beta",) if wildcards.phase == "dpo" else ())
        return cli_flags(self.config["train"][wildcards.phase], keys, {"iters": "train_iters"})

    def train_device_flags(self) -> str:
        """The device alone (`train lora` trains in one go: no checkpoint cadence)."""
        return cli_flags(self.config["train"], ["device"])

    def train_run_flags(self) -> str:
        """The device, the data-parallel size (tp and pp are the layout's, shared with
        hf2mg) and the checkpoint cadence (what a killed job resumes from)."""
        return cli_flags(self.config["train"], ["device", "dp", "save_interval"])

    def phase_iters(self, wildcards: Any) -> int:
        return self.config["train"][wildcards.phase]["iters"]

    def train_logs(self, wildcards: Any) -> list[str]:
        return [f"results/{wildcards.model}/{p}/train_log.jsonl" for p in plan.phases(self.config)]
