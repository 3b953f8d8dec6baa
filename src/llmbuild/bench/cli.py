"""`llmbuild bench ...`: benchmark an OpenAI-compatible service (static and dynamic) and make
the dynamic benchmark's datasets (generate-dataset, filter-dataset).

Both benchmarks write one CSV row per cell (config columns, vLLM-named metrics, validity
columns; every column is defined in ``llmbuild.bench.metrics``) and one JSON line per request.
Both hold the service's benchmark lock while they measure (``llmbuild.bench.lock``):
benchmarks of one service run one after the other, never over each other.

Two gates decide whether the outputs are written (``llmbuild.bench.gate``): the service gate
(failed requests over ``--max-failed-fraction``, or a service process that is gone, fail the
command whatever the mode) and the validity gate (every row ``valid`` under
``--min-rate-fraction``, ``--max-lag-ms`` and the failed fraction; ``--gate-mode warn`` writes
invalid rows marked ``valid=False`` instead of failing). A failed gate writes no CSV, records
or verdict; they go to ``--keep-on-failure DIR`` when given.

One module a verb: ``cli_static``, ``cli_dynamic``, ``cli_dataset`` (both dataset verbs); what
they share (flags, connecting, the gates and the outputs) is ``cli_common``.
"""

from __future__ import annotations

import argparse

from llmbuild.bench import cli_dataset, cli_dynamic, cli_static


def register(verbs: argparse._SubParsersAction) -> None:
    cli_static.register(verbs)
    cli_dynamic.register(verbs)
    cli_dataset.register(verbs)
