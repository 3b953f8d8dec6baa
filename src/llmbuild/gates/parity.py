"""`llmbuild gate parity`: megatron-core's logits on a converted checkpoint against the Hugging
Face model's on the same token sequences (placeholder: being written)."""

from __future__ import annotations

import argparse


def register(verbs: argparse._SubParsersAction) -> None:
    pass
