"""`llmbuild eval ...`: task accuracy of a served model through its OpenAI-compatible API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llmbuild import provenance
from llmbuild.atomic import atomic_file
from llmbuild.errors import UserError


def _accuracy(args: argparse.Namespace) -> int:
    from llmbuild.evaluate.accuracy import ask_all, load_alpaca, score
    from llmbuild.progress import RateLog
    from llmbuild.serve.endpoint import wait_ready

    started = time.time()
    if args.max_tokens < 1:
        raise UserError("must be >= 1", field="--max-tokens")
    if args.concurrency < 1:
        raise UserError("must be >= 1", field="--concurrency")
    if args.limit is not None and args.limit < 1:
        raise UserError("must be >= 1", field="--limit")
    examples = load_alpaca(args.data)
    if args.limit is not None:
        examples = examples[: args.limit]
    from llmbuild.bench.client import Endpoint, api_key_from_env  # aiohttp: after input checks

    api_key = api_key_from_env(args.api_key_env)
    print(f"waiting for {args.endpoint} (up to {args.ready_timeout:g} s)", flush=True)
    info = wait_ready(args.endpoint, args.ready_timeout)
    endpoint = Endpoint(base_url=info.base_url, model=args.model or info.model, api_key=api_key)
    print(f"evaluating {len(examples)} examples from {args.data} on {endpoint.model}", flush=True)
    log = RateLog("eval accuracy", total=len(examples), unit="requests", stream=sys.stdout)
    answers = ask_all(
        endpoint, examples, args.max_tokens, args.concurrency, args.request_timeout, log.update
    )
    log.close()
    result, records = score(examples, answers, endpoint.model)
    out, rec = Path(args.output), Path(args.records)
    with atomic_file(rec) as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    with atomic_file(out) as fh:
        json.dump(result.as_dict(), fh, indent=2)
        fh.write("\n")
    for path in (out, rec):
        provenance.write(
            path,
            command="eval accuracy",
            args=vars(args),
            inputs=[args.data, args.endpoint],
            started=started,
            extra={"model": endpoint.model, "base_url": endpoint.base_url},
        )
    first_error = next((r["error"] for r in records if not r["success"]), "")
    print(
        f"accuracy {result.accuracy:.4f} ({result.correct}/{result.n}), "
        f"{result.failed_requests} failed requests"
        + (f" (first: {first_error[:200]})" if first_error else "")
        + f"; wrote {out}"
    )
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("accuracy", help="exact-match accuracy on Alpaca JSONL via chat API")
    p.add_argument("--endpoint", required=True, help="service endpoint file (JSON)")
    p.add_argument("--data", required=True, help="Alpaca JSONL (e.g. heldout.jsonl)")
    p.add_argument("--output", required=True, help="result JSON")
    p.add_argument("--records", required=True, help="JSONL, one line per example")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--model", default=None, help="served model name (default: endpoint's)")
    p.add_argument(
        "--api-key-env", default=None, help="name of the environment variable holding the API key"
    )
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.set_defaults(func=_accuracy)
