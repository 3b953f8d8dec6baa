"""Several models in one graph: one ``Wiring`` per model behind the object the rules call.

Every rule that makes a model's artifact has the ``{model}`` wildcard (``results/<model>/``),
so each model keeps its own wiring, made from its own one-model config (plan.plan_models), and
``Models`` hands each call to the right one:

- a method the rules pass to Snakemake as an input or params function (``W.train_inputs``)
  is called with the job's wildcards and goes to ``wildcards.model``'s wiring;
- a method the rules call when the graph is read (``W.llmbuild("train")``,
  ``W.bench_static_flags()``) gives its value where every model's is the same, and otherwise a
  function of the job's wildcards giving that model's (Snakemake calls it per job); a mapping
  (``**W.device_resources("serve")``) is unified key by key.

With one model every value is that model's, as a single ``Wiring`` gives it. What spans the
models (the default target, the comparison plots, the wildcard patterns) is defined here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

COMPARE_DIR = "results/compare"


def _is_wildcards(value: Any) -> bool:
    """A job's wildcards (Snakemake's Wildcards, or any object with a ``model``), as opposed
    to the stage names and kinds the rules pass when the graph is read."""
    return not isinstance(value, (str, int, float)) and hasattr(value, "model")


def _per_model(values: Mapping[str, Any], first: Any) -> Callable[..., Any]:
    """A function of a job's wildcards giving its model's value (called with Snakemake's
    arguments when the values are functions themselves)."""

    def get(wildcards: Any, *args: Any, **kwargs: Any) -> Any:
        value = values[wildcards.model]
        return value(wildcards, *args, **kwargs) if callable(value) else value

    if callable(first):
        get.__signature__ = inspect.signature(first)  # type: ignore[attr-defined]
        get.__name__ = getattr(first, "__name__", "per_model")
    return get


def unify(values: Mapping[str, Any]) -> Any:
    """One value for the rules: the models' common value, a mapping unified key by key, or a
    function of the job's wildcards."""
    items = list(values.values())
    first = items[0]
    if all(v == first for v in items[1:]):
        return first
    if all(isinstance(v, dict) for v in items):
        keys = set(first)
        if all(set(v) == keys for v in items):
            return {k: unify({m: v[k] for m, v in values.items()}) for k in first}
    return _per_model(values, first)


class Models:
    """The models' wirings (``{name: Wiring}``, in the config's order) as one."""

    def __init__(self, wirings: Mapping[str, Any], config: Mapping[str, Any]):
        self.wirings = dict(wirings)
        self.config = config  # the graph's own config (envs, plot)

    def of(self, wildcards: Any) -> Any:
        return self.wirings[wildcards.model]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attrs = {m: getattr(w, name) for m, w in self.wirings.items()}
        first = next(iter(attrs.values()))
        if not inspect.ismethod(first) and not inspect.isfunction(first):
            return unify(attrs)

        def call(*args: Any, **kwargs: Any) -> Any:
            if args and _is_wildcards(args[0]):
                return getattr(self.of(args[0]), name)(*args, **kwargs)
            return unify({m: f(*args, **kwargs) for m, f in attrs.items()})

        call.__signature__ = inspect.signature(first)  # type: ignore[attr-defined]
        call.__name__ = name
        return call

    # --- what spans the models ------------------------------------------------------------

    def own_model_pattern(self) -> str:
        """The models whose scale files this graph makes (each wiring's own)."""
        return "|".join(w.own_model_pattern() for w in self.wirings.values())

    def compare_inputs(self, kind: str) -> list[tuple[str, str]]:
        """(label, CSV) of every model's benchmarked variants for the ``kind`` of plot: bench
        (the static benchmarks) or dynamic (of the models whose dynamic benchmarks are on)."""
        out = []
        for m, w in self.wirings.items():
            if kind == "dynamic" and not w.config["bench"]["dynamic"]["enabled"]:
                continue
            csvs = w.bench_csv_paths(m, "dynamic" if kind == "dynamic" else "static")
            out += [(f"{m}/{v}", csv) for v, csv in zip(w.benched, csvs, strict=True)]
        return out

    def compare_csvs(self, wildcards: Any) -> list[str]:
        return [csv for _, csv in self.compare_inputs(wildcards.kind)]

    def compare_flags(self, wildcards: Any) -> str:
        # the plot section is the graph's own: every wiring's SLOs are the same
        first = next(iter(self.wirings.values()))
        return first.labelled_flags([label for label, _ in self.compare_inputs(wildcards.kind)])

    def compare_targets(self) -> list[str]:
        """The comparison plots across the models (several models only: one model's own
        plots compare its variants already)."""
        if len(self.wirings) < 2:
            return []
        out = [f"{COMPARE_DIR}/bench.png"]
        if self.compare_inputs("dynamic"):
            out.append(f"{COMPARE_DIR}/dynamic.png")
        return out

    def final_targets(self) -> list[str]:
        out = [t for w in self.wirings.values() for t in w.final_targets()]
        return out + self.compare_targets()
