"""Running the graph on clusters: the environment check before device jobs, Slurm planning
checks, multi-node launch commands and Volcano (Kubernetes) manifests for Ascend and GPU pools.
"""
