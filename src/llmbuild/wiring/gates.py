"""Where each gate's verdict lives, and which verdicts prove what a rule consumes."""

from __future__ import annotations

from typing import Any

from llmbuild import plan
from llmbuild.serve import sweep
from llmbuild.wiring.base import Base


class GatesWiring(Base):
    def gate_path(self, model: str, gate: str, subject: str) -> str:
        return f"results/{model}/gates/{gate}/{subject}.json"

    def parity_gate(self, model: str, phase: str) -> str:
        """The verdict proving ``phase``'s converted checkpoint (base: HF -> Megatron; trained
        phases: Megatron -> HF)."""
        if phase == "base":
            return self.gate_path(model, "parity", "base-hf2mg")
        return self.gate_path(model, "parity", f"{phase}-mg2hf")

    def variant_gates(self, wildcards: Any) -> list[str]:
        """What proves a served variant's model before a service starts on it: the parity of
        its reconversion; for a quantized variant's benchmark also its accuracy gate (its
        evaluation then comes first); the LoRA variants' in wiring/lora.py."""
        if self.is_lora_variant(wildcards.variant):  # type: ignore[attr-defined]
            return self.lora_variant_gates(wildcards)  # type: ignore[attr-defined]
        phase, _, scheme = wildcards.variant.partition("-")
        gates = [] if phase == "base" else [self.parity_gate(wildcards.model, phase)]
        if scheme and getattr(wildcards, "consumer", None) == "bench":
            gates.append(self.gate_path(wildcards.model, "quant", wildcards.variant))
        return gates

    def proven_variant_gates(self, wildcards: Any) -> list[str]:
        """variant_gates, and a quantized variant's accuracy gate whatever reads the variant
        (a sweep's service, MindIE's config), as for a benchmark's service."""
        gates = self.variant_gates(wildcards)
        quant = self.gate_path(wildcards.model, "quant", wildcards.variant)
        if wildcards.variant.partition("-")[2] and quant not in gates:
            gates = [*gates, quant]
        return gates

    def all_gates(self, wildcards: Any) -> list[str]:
        """Every verdict of the default target's graph, for the summary table."""
        model = wildcards.model
        phases = {"base"} | {v.partition("-")[0] for v in self.served}
        out = [self.parity_gate(model, p) for p in sorted(phases)]
        out += [self.gate_path(model, "train", p) for p in plan.phases(self.config)]
        out += [self.gate_path(model, "quant", v) for v in self.served if v.partition("-")[2]]
        out += [self.gate_path(model, "requests", f"{v}-eval") for v in self.served]
        kinds = ["static"] + (["dynamic"] if self.config["bench"]["dynamic"]["enabled"] else [])
        out += [self.gate_path(model, "bench", f"{v}-{k}") for v in self.benched for k in kinds]
        # each sweep benchmark's validity verdict (rule bench_sweep)
        out += [
            self.gate_path(model, run.service.dir, run.workload)
            for name in self.config.get("sweeps") or {}
            for run in sweep.runs(self.config, name)
        ]
        return out + self.lora_gates(model)  # type: ignore[attr-defined]
