"""Typed records of one benchmark request and what came back (vLLM's benchmark client design).

A request that fails is a record with ``success=False`` and an ``error`` string, never an
exception, so a run always completes and its failures are counted. Times are seconds, measured
with ``time.perf_counter`` on the client; ``scheduled_time`` and ``start_time`` count from the
start of the cell.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from llmbuild.errors import UserError


@dataclass(frozen=True)
class RequestSpec:
    """One request to send: a prompt of a known token length and the tokens to generate.

    ``ignore_eos`` forces exactly ``output_len`` tokens (``ignore_eos`` + ``min_tokens``);
    without it ``output_len`` is only the cap (``max_tokens``) and the model stops where it
    likes. ``model`` overrides the endpoint's model name (a LoRA adapter's name)."""

    prompt: str
    prompt_len: int
    output_len: int
    request_id: str = ""
    ignore_eos: bool = True
    model: str | None = None

    def __post_init__(self) -> None:
        if self.prompt_len < 1:
            raise UserError(f"prompt_len must be >= 1, got {self.prompt_len}", field="prompt_len")
        if self.output_len < 1:
            raise UserError(f"output_len must be >= 1, got {self.output_len}", field="output_len")


@dataclass
class RequestRecord:
    """What one request measured. ``itl`` holds every gap between streamed token chunks after
    the first; ``output_tokens`` comes from the server's usage when it sent one
    (``output_tokens_source == "usage"``), else it is the number of token chunks."""

    request_id: str = ""
    prompt_len: int = 0
    output_len: int = 0  # requested (forced) or the cap (natural)
    success: bool = False
    error: str = ""
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0
    output_tokens: int = 0
    output_tokens_source: str = ""  # "usage" | "chunks" | ""
    chunks: int = 0  # streamed chunks that carried output
    server_prompt_tokens: int | None = None
    generated_text: str = ""
    model: str = ""
    scheduled_time: float = 0.0  # when the schedule said to send it
    start_time: float = 0.0  # when it was sent
    queue_wait: float = 0.0  # time held back by a concurrency limit
    sched_lag: float = 0.0  # client lateness: sent - max(scheduled, released by the limit)

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first; None for 1-token outputs or failures."""
        if not self.success or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
