from __future__ import annotations

import math

import pytest

from llmbuild.bench.metrics import (
    SLO,
    compute_metrics,
    max_in_flight,
    percentile,
    summarize,
    validity,
)
from llmbuild.bench.records import RequestRecord, RequestSpec
from llmbuild.errors import UserError

pytestmark = pytest.mark.unit


def ok(ttft: float, itl: list[float], prompt_len: int = 32, **kw) -> RequestRecord:
    """A successful record whose latency is ttft + sum(itl) and one token per chunk."""
    return RequestRecord(
        prompt_len=prompt_len,
        output_len=len(itl) + 1,
        success=True,
        ttft=ttft,
        itl=list(itl),
        latency=ttft + sum(itl),
        output_tokens=kw.pop("output_tokens", len(itl) + 1),
        **kw,
    )


def failed(error: str = "HTTP 500: boom") -> RequestRecord:
    return RequestRecord(prompt_len=32, output_len=16, success=False, error=error)


def test_empty_cell_is_all_nan_not_a_crash():
    m = compute_metrics([], 0.0)
    assert m["completed"] == 0 and m["failed"] == 0
    assert math.isnan(m["request_throughput"]) and math.isnan(m["output_throughput"])
    for key in ("mean_ttft_ms", "median_tpot_ms", "p90_itl_ms", "p99_e2el_ms", "std_ttft_ms"):
        assert math.isnan(m[key]), key
    m = compute_metrics([], 2.0)
    assert m["request_throughput"] == 0.0 and m["total_token_throughput"] == 0.0


def test_all_failures_count_and_give_no_latencies():
    recs = [failed(), failed("ClientPayloadError: cut"), failed()]
    m = compute_metrics(recs, 2.0, SLO(ttft_ms=100))
    assert (m["completed"], m["failed"]) == (0, 3)
    assert m["output_throughput"] == 0.0 and m["request_throughput"] == 0.0
    assert m["total_input_tokens"] == 0  # failed requests' prompts are not throughput
    assert math.isnan(m["p90_ttft_ms"]) and math.isnan(m["mean_e2el_ms"])
    assert m["request_goodput"] == 0.0 and m["slo_attainment"] == 0.0


def test_single_token_output_has_ttft_but_no_tpot():
    rec = ok(0.25, [], output_tokens=1)
    assert rec.tpot is None
    m = compute_metrics([rec], 1.0, SLO(ttft_ms=300, tpot_ms=1))
    assert m["mean_ttft_ms"] == pytest.approx(250.0)
    assert math.isnan(m["mean_tpot_ms"]) and math.isnan(m["p99_tpot_ms"])
    assert math.isnan(m["mean_itl_ms"])
    assert m["mean_e2el_ms"] == pytest.approx(250.0)
    # no decode phase, so the TPOT objective cannot be missed
    assert m["slo_attainment"] == 1.0 and m["request_goodput"] == pytest.approx(1.0)


def test_known_itl_lists_give_exact_percentiles():
    recs = [ok(0.100, [0.010, 0.020, 0.030]), ok(0.300, [0.040, 0.050])]
    m = compute_metrics(recs, 1.0)
    # pooled ITL samples: 10, 20, 30, 40, 50 ms
    assert m["mean_itl_ms"] == pytest.approx(30.0)
    assert m["median_itl_ms"] == pytest.approx(30.0)
    assert m["p90_itl_ms"] == pytest.approx(46.0)  # 40 + 0.6 * (50 - 40)
    assert m["p99_itl_ms"] == pytest.approx(49.6)  # 40 + 0.96 * (50 - 40)
    assert m["std_itl_ms"] == pytest.approx(math.sqrt(200.0))
    # TPOT per request: (latency - ttft) / (tokens - 1) = 60/3 and 90/2 ms
    assert m["mean_tpot_ms"] == pytest.approx((20.0 + 45.0) / 2)
    assert m["p90_tpot_ms"] == pytest.approx(20.0 + 0.9 * 25.0)
    assert m["median_ttft_ms"] == pytest.approx(200.0)
    assert m["p99_ttft_ms"] == pytest.approx(100.0 + 0.99 * 200.0)
    assert m["mean_e2el_ms"] == pytest.approx((160.0 + 390.0) / 2)


def test_percentile_matches_numpy_when_available():
    np = pytest.importorskip("numpy")
    vals = sorted([3.0, 1.5, 9.25, 4.0, 7.0, 2.0, 11.0])
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(vals, q) == pytest.approx(float(np.percentile(vals, q)))
    s = summarize(vals, "x")
    assert s["std_x_ms"] == pytest.approx(float(np.std(vals)))


def test_throughputs_count_successful_tokens_only():
    recs = [ok(0.1, [0.01] * 15, prompt_len=32), ok(0.1, [0.01] * 15, prompt_len=32), failed()]
    m = compute_metrics(recs, 2.0)
    assert (m["completed"], m["failed"]) == (2, 1)
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["input_throughput"] == pytest.approx(32.0)
    assert m["output_throughput"] == pytest.approx(16.0)
    assert m["total_token_throughput"] == pytest.approx(48.0)
    assert math.isnan(m["request_goodput"])  # no SLO given


def test_output_tokens_from_usage_drive_tpot():
    # 4 chunks but the server reported 8 tokens (e.g. speculative decoding)
    rec = ok(0.1, [0.03, 0.03, 0.03], output_tokens=8)
    assert rec.tpot == pytest.approx(0.09 / 7)
    assert compute_metrics([rec], 1.0)["output_throughput"] == pytest.approx(8.0)


def test_goodput_against_ttft_and_tpot_slos():
    fast = ok(0.050, [0.010] * 9)  # ttft 50 ms, tpot 10 ms
    slow_first = ok(0.500, [0.010] * 9)
    slow_decode = ok(0.050, [0.100] * 9)
    recs = [fast, slow_first, slow_decode, failed()]
    m = compute_metrics(recs, 2.0, SLO(ttft_ms=100, tpot_ms=20))
    assert m["request_goodput"] == pytest.approx(0.5)
    assert m["slo_attainment"] == pytest.approx(0.25)
    m = compute_metrics(recs, 2.0, SLO(ttft_ms=1000))
    assert m["slo_attainment"] == pytest.approx(0.75)


def test_metric_names_follow_vllm():
    m = compute_metrics([ok(0.1, [0.01])], 1.0)
    for name in (
        "completed",
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "mean_ttft_ms",
        "median_ttft_ms",
        "p90_ttft_ms",
        "p99_ttft_ms",
        "mean_tpot_ms",
        "p90_tpot_ms",
        "mean_itl_ms",
        "p99_e2el_ms",
    ):
        assert name in m


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf")])
def test_slo_rejects_non_positive(bad):
    with pytest.raises(UserError, match="slo-ttft-ms"):
        SLO(ttft_ms=bad)


def test_request_spec_validates():
    with pytest.raises(UserError, match="output_len"):
        RequestSpec(prompt="x", prompt_len=1, output_len=0)


# --- validity columns ----------------------------------------------------------------------


def _sent(rec: RequestRecord, start: float, due: float, wait: float = 0.0) -> RequestRecord:
    rec.start_time, rec.scheduled_time, rec.queue_wait = start, due, wait
    rec.sched_lag = start - due - wait
    return rec


def test_validity_of_an_empty_cell():
    v = validity([])
    assert (v["successes"], v["failures"], v["first_error"]) == (0, 0, "")
    assert math.isnan(v["p99_sched_lag_ms"]) and math.isnan(v["mean_queue_wait_ms"])
    assert v["max_in_flight"] == 0 and v["too_few_for_p99"] is True
    assert v["output_tokens_source"] == "" and math.isnan(v["mean_tokens_per_chunk"])


def test_validity_of_all_failures():
    recs = [
        _sent(failed("ClientConnectorError: refused\n  at 127.0.0.1"), 0.0, 0.0),
        _sent(failed("HTTP 500: boom"), 0.5, 0.499),
    ]
    v = validity(recs, target_rate=2.0, achieved_rate=1.9)
    assert (v["successes"], v["failures"]) == (0, 2)
    assert v["first_error"] == "ClientConnectorError: refused at 127.0.0.1"
    assert v["max_sched_lag_ms"] == pytest.approx(1.0)  # failed requests were still sent
    assert (v["target_request_rate"], v["achieved_request_rate"]) == (2.0, 1.9)
    assert v["output_len_mismatch"] == 0 and v["prompt_len_mismatch"] == 0


def test_validity_of_single_token_outputs_and_lag_percentiles():
    recs = []
    for k in range(100):
        r = ok(0.02, [], output_tokens=1)
        r.output_len, r.chunks, r.output_tokens_source = 1, 1, "usage"
        r.server_prompt_tokens = 32
        recs.append(_sent(r, k * 0.1 + k / 1000, k * 0.1))  # lag k ms
    v = validity(recs)
    assert v["too_few_for_p99"] is False and v["output_len_mismatch"] == 0
    assert v["mean_sched_lag_ms"] == pytest.approx(49.5)
    assert v["p99_sched_lag_ms"] == pytest.approx(98.01)
    assert v["max_sched_lag_ms"] == pytest.approx(99.0)
    assert v["mean_tokens_per_chunk"] == 1.0 and v["output_tokens_source"] == "usage"
    assert v["max_in_flight"] == 1  # each ends (20 ms) before the next starts


def test_validity_mismatches_depend_on_mode_and_api():
    a = ok(0.1, [0.01] * 3, output_tokens=4)  # asked 4, got 4
    b = ok(0.1, [0.01] * 3, output_tokens=4)
    b.output_len = 8  # asked 8, stopped at 4
    a.server_prompt_tokens, b.server_prompt_tokens = 32, 40  # b's chat template added 8
    assert validity([a, b])["output_len_mismatch"] == 1
    assert validity([a, b], forced_output=False)["output_len_mismatch"] == 0
    assert validity([a, b])["prompt_len_mismatch"] == 1
    assert math.isnan(validity([a, b], check_prompt_len=False)["prompt_len_mismatch"])


def test_max_in_flight_counts_overlaps():
    recs = [
        RequestRecord(start_time=s, latency=lat)
        for s, lat in [(0, 1), (0.5, 1), (0.9, 0.05), (1.0, 1)]
    ]
    # at 0.9-0.95 three are open; the first ends at 1.0 exactly when the fourth starts
    assert max_in_flight(recs) == 3
