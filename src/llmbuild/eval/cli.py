"""`llmbuild eval ...`: task accuracy of a served model through its OpenAI-compatible API.

`eval accuracy` is also a gate on its service (``llmbuild.bench.gate``): more failed requests
than ``--max-failed-fraction`` allows, a service process that is gone or an endpoint that says
stopped fail it with one line (variant, figures, the server log's root-cause line) and leave
no result, records or verdict behind; they go to ``--keep-on-failure DIR`` when given. An
accuracy computed over a dead service's errors is not an accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.bench.cli_common import add_client, add_failure, knob
from llmbuild.errors import UserError


def _accuracy(args: argparse.Namespace) -> int:
    from llmbuild.bench import gate
    from llmbuild.eval.accuracy import ask_all, load_alpaca, score
    from llmbuild.gates import verdict as V
    from llmbuild.progress import RateLog
    from llmbuild.serve.endpoint import wait_ready

    started = time.time()
    if args.max_tokens < 1:
        raise UserError("must be >= 1", field="--max-tokens")
    if args.concurrency < 1:
        raise UserError("must be >= 1", field="--concurrency")
    if args.limit is not None and args.limit < 1:
        raise UserError("must be >= 1", field="--limit")
    gate.check_fraction(args.max_failed_fraction, "--max-failed-fraction")
    keep_dir = gate.check_keep_dir(args.keep_on_failure)
    examples = load_alpaca(args.input)
    if args.limit is not None:
        examples = examples[: args.limit]
    from llmbuild.bench.client import Endpoint, api_key_from_env  # aiohttp: after input checks

    api_key = api_key_from_env(args.api_key_env)
    print(f"waiting for {args.endpoint} (up to {args.ready_timeout:g} s)", flush=True)
    info = wait_ready(args.endpoint, args.ready_timeout)
    endpoint = Endpoint(base_url=info.base_url, model=args.model or info.model, api_key=api_key)
    print(f"evaluating {len(examples)} examples from {args.input} on {endpoint.model}", flush=True)
    log = RateLog("eval accuracy", total=len(examples), unit="requests", stream=sys.stdout)
    answers = ask_all(
        endpoint, examples, args.max_tokens, args.concurrency, args.request_timeout, log.update
    )
    log.close()
    result, records = score(examples, answers, endpoint.model)
    out, rec = Path(args.output), Path(args.records)
    first_error = next((r["error"] for r in records if not r["success"]), "")

    # the service gate: a dead service or too many failed requests leave no result behind
    service = gate.service_after_run(args.endpoint, info, endpoint.model)
    verdict = gate.service_verdict(
        service, result.failed_requests, result.n, args.max_failed_fraction
    )
    print(verdict.line(), flush=True)
    with gate.Staged() as staged:
        with staged.open(rec) as fh:
            for r in records:
                fh.write(json.dumps(r) + "\n")
        with staged.open(out) as fh:
            # the dtype the service ran in (chosen per variant and device), for the summary
            json.dump(result.as_dict() | {"served_dtype": info.dtype}, fh, indent=2)
            fh.write("\n")
        if verdict.failed:
            kept = staged.keep(keep_dir)
            if keep_dir is not None:
                kept.append(gate.keep_verdict(keep_dir, f"{out.stem}.verdict.json", verdict))
            raise UserError(gate.failure_line(verdict, service, first_error, kept, "eval accuracy"))
        staged.publish()
    for path in (out, rec):
        provenance.write(
            path,
            command="eval accuracy",
            args=vars(args),
            inputs=[args.input, args.endpoint],
            started=started,
            extra={
                "model": endpoint.model,
                "base_url": endpoint.base_url,
                "served_dtype": info.dtype,
            },
        )
    if args.verdict:
        V.write(
            args.verdict,
            verdict,
            command="eval accuracy",
            args=vars(args),
            inputs=[out, rec],
            started=started,
        )
    print(
        f"accuracy {result.accuracy:.4f} ({result.correct}/{result.n}), "
        f"{result.failed_requests} failed requests"
        + (f" (first: {first_error[:200]})" if first_error else "")
        + f"; wrote {out}"
    )
    return 0


SUMMARY_FIELDS = ("accuracy", "n", "correct", "failed_requests", "model", "served_dtype")


def result_name(path: str | Path) -> str:
    """A result's row in the summary: its directory below ``eval/`` (``sft``;
    ``lora/upper/adapter`` for an adapter through the LoRA service), else the directory's name."""
    parts = Path(path).parent.parts
    if "eval" in parts[:-1]:
        at = len(parts) - 1 - parts[::-1].index("eval")
        return "/".join(parts[at + 1 :])
    return parts[-1]


def _summary(args: argparse.Namespace) -> int:
    """One row per variant (the result file's directory below eval/) of the accuracy results."""
    from llmbuild.atomic import atomic_file

    started = time.time()
    rows = {}
    for path in args.input:
        try:
            rec = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not an accuracy result ({exc})") from None
        rows[result_name(path)] = {k: rec.get(k) for k in SUMMARY_FIELDS}
    with atomic_file(args.output) as fh:
        json.dump(rows, fh, indent=2)
        fh.write("\n")
    provenance.write(
        args.output, command="eval summary", args=vars(args), inputs=args.input, started=started
    )
    print(f"wrote {args.output}: " + ", ".join(f"{k} {v['accuracy']}" for k, v in rows.items()))
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    s = verbs.add_parser("summary", help="every variant's accuracy in one JSON")
    s.add_argument("--input", nargs="+", required=True, help="accuracy.json files, one a variant")
    s.add_argument("--output", required=True, help="summary JSON")
    s.set_defaults(func=_summary)
    p = verbs.add_parser("accuracy", help="exact-match accuracy on Alpaca JSONL via chat API")
    p.add_argument("--input", required=True, help="held-out Alpaca JSONL (e.g. heldout.jsonl)")
    p.add_argument("--endpoint", required=True, help="service endpoint file (JSON)")
    p.add_argument("--output", required=True, help="result JSON")
    p.add_argument("--records", required=True, help="JSONL, one line per example")
    knob(p, "eval.max_tokens", int, "tokens an answer may have")
    knob(p, "eval.concurrency", int, "requests in flight")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    add_client(p)
    add_failure(p, verdict="service_requests", outputs="the records and the would-be result")
    p.set_defaults(func=_accuracy)
