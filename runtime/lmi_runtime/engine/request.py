"""What a request carries through the engine: its sampling parameters, its token state and the
events it emits (one per generated token, then one when it finishes)."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from lmi_runtime.errors import LmiError


class RequestRejected(LmiError):
    """A request the engine cannot take (bad length, full queue); `status` is the HTTP code."""

    def __init__(self, message: str, status: int, hint: str | None = None):
        super().__init__(message, hint)
        self.status = status


class QueueFull(RequestRejected):
    def __init__(self, limit: int):
        super().__init__(
            f"the server is at its limit of {limit} waiting requests (MAX_CONCURRENT_REQUESTS)",
            status=503,
            hint="retry later, or raise MAX_CONCURRENT_REQUESTS",
        )


class SamplingParams(BaseModel):
    """How to pick tokens. Greedy unless `do_sample`; HF processor order: repetition penalty,
    temperature, top-k, top-p."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool = False
    temperature: float = Field(default=1.0, ge=0.0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0.0


class FinishReason(str, enum.Enum):
    LENGTH = "length"
    EOS = "eos_token"
    STOP = "stop_sequence"
    ERROR = "error"
    CANCELLED = "cancelled"


@dataclass
class TokenEvent:
    """One generated token. `text` is the text released at this step: empty while bytes of a
    multi-byte character or a possible stop sequence are held back, longer when they are
    released. Concatenating every event's text gives the final generated text."""

    id: int
    text: str
    log_prob: float


@dataclass
class FinishEvent:
    reason: FinishReason
    text: str  # the whole generated text (stop sequence removed)
    prompt_tokens: int
    generated_tokens: int
    error: str | None = None


_ids = itertools.count(1)


@dataclass
class Sequence:
    """A request's state inside the engine (one sequence per request: n=1)."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    finish_reason: FinishReason | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def total_tokens(self) -> int:
        """Tokens the KV cache must hold at most for this sequence."""
        return len(self.prompt_ids) + self.max_new_tokens
