"""Reproducibility audits over a built graph: `llmbuild audit` and `llmbuild why`.

- ``graph``: the jobs as Snakemake plans them, its recorded metadata, commands parsed;
- ``records``: provenance records, environments, config keys of arguments;
- ``checks``: record, closure, params, bytes, drift and gates checks;
- ``lineage``: an artifact traced back to raw inputs through the records;
- ``rebuild``: deterministic steps rebuilt into a scratch directory and compared;
- ``why``: the field-level cause of each job a run would execute;
- ``cli``: the two commands.
"""
