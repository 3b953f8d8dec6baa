"""`llmbuild cluster check` (the environment check before device jobs) and `llmbuild cluster
volcano` (Volcano Job manifests from the graph)."""

from __future__ import annotations

import argparse
import json


def _check(args: argparse.Namespace) -> int:
    import time

    from llmbuild import provenance
    from llmbuild.atomic import atomic_file
    from llmbuild.cluster.check import check

    started = time.time()
    facts = check(args.device, args.key)
    with atomic_file(args.output) as fh:
        json.dump(facts, fh, indent=2)
        fh.write("\n")
    provenance.write(args.output, command="cluster check", args=vars(args), started=started)
    found = facts.get("devices")
    cpu = facts["cpu"]
    what = f"{len(found)} {args.device} device(s)" if found else f"{cpu['cores']} cores"
    print(f"{facts['host']}: {what}; cpu {cpu['model']} ({', '.join(cpu['isa'])})")
    return 0


def _volcano(args: argparse.Namespace) -> int:
    from llmbuild.cluster.volcano import write_manifests

    written = write_manifests(
        args.output, args.profile, args.snakemake, args.configfile, args.target
    )
    print(f"{len(written)} Volcano manifests in {args.output} (apply in order: order.txt)")
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("check", help="is this job's device on this node? (facts as JSON)")
    p.add_argument("--device", required=True, choices=["cpu", "cuda", "npu"])
    p.add_argument("--output", required=True)
    p.add_argument("--key", default="train.device", help="the config key that asked for the device")
    p.set_defaults(func=_check)

    p = verbs.add_parser("volcano", help="Volcano Job manifests for the graph's jobs")
    p.add_argument("--output", required=True, help="directory for the manifests")
    p.add_argument("--profile", default="profiles/volcano", help="profile with cluster.yaml")
    p.add_argument("--snakemake", default="snakemake", help="the snakemake to plan with")
    p.add_argument("--configfile", nargs="*", default=[], help="config overlays, as snakemake")
    p.add_argument("--target", nargs="*", default=[], help="targets (default: the graph's all)")
    p.set_defaults(func=_volcano)
