"""Multi-node launch commands for training: torchrun on every node of an allocation, meeting
at a c10d rendezvous on the first node.

Slurm: the train job asks for ``nodes`` nodes with one task each; inside it, ``srun`` starts
one torchrun per node, the master address is the allocation's first host (from
``scontrol show hostnames`` over the job's node list) and the rendezvous id is the job id.
Volcano: the svc plugin publishes the hosts of each task (``VC_<TASK>_HOSTS``); the first host
of the ``master`` task is the rendezvous, and on Ascend HCCL reads the rank table the
configmap1980 plugin writes (``RANK_TABLE_FILE``).
"""

from __future__ import annotations

from llmbuild.errors import UserError

PORT = 29500

# The job's node list: the job steps Snakemake's Slurm executor starts drop SLURM_JOB_NODELIST
# (it keeps SLURM_JOB_ID), so ask the controller when it is gone.
SLURM_MASTER = (
    'MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(squeue -h -j '
    '"$SLURM_JOB_ID" -o %N)}" | head -n 1)'
)


def ranks_per_node(ranks: int, nodes: int, field: str = "train.nodes") -> int:
    if nodes < 1 or ranks % nodes:
        raise UserError(
            f"{ranks} ranks (tp * pp * dp) do not split over {nodes} nodes; make tp * pp * dp a "
            "multiple of train.nodes",
            field=field,
        )
    return ranks // nodes


def slurm_torchrun(torchrun: str, nodes: int, ranks: int, port: int = PORT) -> str:
    """The launcher prefix of a command run with ``-m llmbuild ...`` on ``nodes`` nodes."""
    per_node = ranks_per_node(ranks, nodes)
    return (
        f"{SLURM_MASTER} && srun --overlap --nodes {nodes} --ntasks {nodes}"
        f" --ntasks-per-node 1 --kill-on-bad-exit=1 {torchrun} --nnodes {nodes}"
        f" --nproc_per_node {per_node} --rdzv_backend c10d"
        f' --rdzv_endpoint "$MASTER_ADDR:{port}" --rdzv_id "llmbuild-$SLURM_JOB_ID" -m llmbuild'
    )


def volcano_torchrun(torchrun: str, nodes: int, ranks: int, port: int = PORT) -> str:
    """The same launcher in a pod of a Volcano job with tasks ``master`` and ``worker``."""
    per_node = ranks_per_node(ranks, nodes)
    return (
        f"{torchrun} --nnodes {nodes} --nproc_per_node {per_node} --rdzv_backend c10d"
        f' --rdzv_endpoint "${{VC_MASTER_HOSTS%%,*}}:{port}" --rdzv_id "llmbuild-$VC_JOB_NAME"'
        " -m llmbuild"
    )
