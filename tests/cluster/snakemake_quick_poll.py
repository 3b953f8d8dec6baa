"""`python -m snakemake` with the remote executors' status checks at most LLMBUILD_POLL_CAP_S
(default 2) seconds apart, for the one-node test cluster of `make test-slurm`.

The Slurm executor waits 10 s longer after every round of status checks in which no job
finished (up to 180 s): right for a busy cluster, where each squeue costs the controller, but
on a one-node cluster that answers at once it leaves each finished job waiting for the next
round (a 13 s job is seen after 33 s), which adds up along the graph's chain of jobs. Only
the cadence changes: the jobs, sbatch and squeue are the real ones.
"""

import os
import sys

from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

CAP_S = float(os.environ.get("LLMBUILD_POLL_CAP_S", "2"))
_interval = RemoteExecutor.next_seconds_between_status_checks


def _capped(self, value):
    _interval.fset(self, None if value is None else min(value, CAP_S))


RemoteExecutor.next_seconds_between_status_checks = _interval.setter(_capped)

if __name__ == "__main__":
    from snakemake.cli import main

    sys.exit(main())
