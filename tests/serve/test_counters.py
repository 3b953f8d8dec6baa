"""The server's counters around a benchmark cell: vLLM's /metrics text to CSV columns."""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llmbuild.serve import counters

pytestmark = pytest.mark.unit

# vLLM 0.32's exposition of the counters (two engines' label sets for one of them)
TEXT = """\
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="sft"} 120.0
vllm:generation_tokens_created{engine="0",model_name="sft"} 1.7e+09
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="sft"} 30.0
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="sft"} 90.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="sft"} 45.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="sft"} 15.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",position="0"} 25.0
vllm:prefix_cache_queries_total{engine="0",model_name="sft"} 1000.0
vllm:prefix_cache_hits_total{engine="0",model_name="sft"} 750.0
vllm:num_requests_running{engine="0",model_name="sft"} 0.0
"""


def test_parse_sums_label_sets_and_ignores_the_rest():
    got = counters.parse(TEXT)
    assert got == {
        "vllm:generation_tokens": 120.0,
        "vllm:spec_decode_num_drafts": 30.0,
        "vllm:spec_decode_num_draft_tokens": 90.0,
        "vllm:spec_decode_num_accepted_tokens": 60.0,
        "vllm:prefix_cache_queries": 1000.0,
        "vllm:prefix_cache_hits": 750.0,
    }


def test_columns_are_the_growth_between_reads():
    before = counters.parse(TEXT)
    after = dict(before)
    after["vllm:generation_tokens"] += 64
    after["vllm:spec_decode_num_drafts"] += 20
    after["vllm:spec_decode_num_draft_tokens"] += 60
    after["vllm:spec_decode_num_accepted_tokens"] += 15
    after["vllm:prefix_cache_queries"] += 400
    after["vllm:prefix_cache_hits"] += 300
    cols = counters.columns(before, after)
    assert list(cols) == list(counters.COLUMNS)
    assert cols["server_output_tokens"] == 64
    assert cols["spec_acceptance_rate"] == pytest.approx(0.25)
    assert cols["spec_mean_acceptance_length"] == pytest.approx(1.75)
    assert cols["prefix_cache_hit_rate"] == pytest.approx(0.75)


def test_missing_counters_are_nan():
    only_tokens = {"vllm:generation_tokens": 5.0}
    cols = counters.columns({}, only_tokens)
    assert cols["server_output_tokens"] == 5.0
    assert all(math.isnan(cols[c]) for c in counters.COLUMNS if c != "server_output_tokens")
    assert all(math.isnan(v) for v in counters.columns(None, only_tokens).values())
    # no speculation happened in the cell: no rate rather than a division by zero
    assert math.isnan(
        counters.columns(counters.parse(TEXT), counters.parse(TEXT))["spec_acceptance_rate"]
    )


@pytest.fixture
def metrics_server():
    state = {"text": TEXT, "status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = state["text"].encode()
            self.send_response(state["status"] if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()


def test_cell_counters_read_the_server_around_each_cell(metrics_server):
    base_url, state = metrics_server
    cells = counters.CellCounters(base_url)
    cells.start()
    state["text"] = TEXT.replace("750.0", "1150.0").replace("1000.0", "1500.0")
    row: dict = {"concurrency": 1}
    cells.add(row)
    assert row["prefix_cache_hit_rate"] == pytest.approx(0.8)
    assert row["server_output_tokens"] == 0
    row2: dict = {}
    cells.add(row2)  # nothing grew since the last read
    assert row2["prefix_cache_queries"] == 0 and math.isnan(row2["prefix_cache_hit_rate"])
    state["status"] = 404
    row3: dict = {}
    cells.add(row3)
    assert all(math.isnan(v) for v in row3.values())
    assert counters.root_url("http://h:1/v1/") == "http://h:1"
