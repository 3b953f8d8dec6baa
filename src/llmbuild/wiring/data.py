"""The data stage's wiring: the synthetic inputs, and the flags of tokenization."""

from __future__ import annotations

from typing import Any

from llmbuild.wiring.base import Base, cli_flags, join

TASK_KEYS = ("task", "num_train", "num_heldout", "min_len", "max_len", "seed")


class DataWiring(Base):
    def corpus(self, wildcards: Any) -> str:
        return (
            self.config["data"]["pretrain"]["path"]
            or f"results/{wildcards.model}/data/corpus.jsonl"
        )

    def sft_train(self, wildcards: Any) -> str:
        return (
            self.config["data"]["sft"]["path"] or f"results/{wildcards.model}/data/task/train.jsonl"
        )

    def sft_heldout(self, wildcards: Any) -> str:
        return (
            self.config["data"]["sft"]["heldout"]
            or f"results/{wildcards.model}/data/task/heldout.jsonl"
        )

    def dpo_train(self, wildcards: Any) -> str:
        return (
            self.config["data"]["dpo"]["path"]
            or f"results/{wildcards.model}/data/task/preference.jsonl"
        )

    def synth_corpus_flags(self) -> str:
        return cli_flags(self.config["data"]["pretrain"], ["num_docs", "seed"])

    def task_flags(self, wildcards: Any) -> str:
        """The synthetic task's knobs that shape this split (the held-out split ignores
        num_train, so more training examples leave evaluation's input untouched)."""
        params = {k: self.config["data"]["sft"][k] for k in TASK_KEYS}
        if wildcards.split == "heldout":
            params["num_train"] = 1
        return cli_flags(params, TASK_KEYS)

    def shard_seq_length(self, phase: str) -> int:
        """The length each shard set is checked against: data.seq_length when set (planning
        refuses one above the SFT phase's), else the length its training phase runs at."""
        return self.config["data"]["seq_length"] or self.config["train"][phase]["seq_length"]

    def sft_format(self) -> str:
        sft = self.config["data"]["sft"]
        return sft["format"] if sft["path"] else "alpaca"

    def tokenize_workers(self, wildcards: Any, threads: int) -> int:
        """data.workers, else the rule's threads."""
        return self.config["data"]["workers"] or threads

    def tokenize_flags(self, phase: str) -> str:
        data = self.config["data"]
        if phase == "pretrain":
            own = cli_flags(data["pretrain"], ["text_key"])
        elif phase == "dpo":
            own = cli_flags(data, ["overlong"])
        else:
            own = join(f"--format {self.sft_format()}", cli_flags(data, ["overlong"]))
        return join(
            f"--seq-length {self.shard_seq_length(phase)}",
            cli_flags(data, ["eod_token"]),
            own,
        )
