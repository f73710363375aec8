"""What a request carries through the engine: its sampling parameters, its token state and the
events it emits (one per generated token, then one when it finishes)."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


SEED_SPACE = 2**64  # torch generators take 64-bit seeds; larger ones are reduced modulo this


class SamplingParams(BaseModel):
    """How to pick tokens, validated to finite, sane ranges before anything reaches the
    sampler. Greedy unless `do_sample`; processor order: logit bias, repetition penalty,
    frequency/presence penalties, temperature, top-k, top-p, min-p (HF's, then vLLM's)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_new_tokens: int | None = Field(default=None, ge=0)  # 0: score the prompt only
    clamp_max_new_tokens: bool = False  # too long for the context: clamp (True) or reject
    do_sample: bool = False
    temperature: float = Field(default=1.0, ge=0.0, le=100.0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, ge=0.01, le=100.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] = Field(default_factory=dict)
    ignore_eos: bool = False
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    logprobs: int | None = Field(default=None, ge=0, le=20)  # top-N alternatives per generated token
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)  # score the prompt, with top-N

    @field_validator("seed")
    @classmethod
    def _seed_in_64_bits(cls, seed: int | None) -> int | None:
        return None if seed is None else seed % SEED_SPACE

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, bias: dict[int, float]) -> dict[int, float]:
        bad = {k: v for k, v in bias.items() if not -100.0 <= v <= 100.0}
        if bad:
            raise ValueError(f"logit_bias values must be within [-100, 100], got {bad}")
        return bias

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


class FinishReason(str, enum.Enum):
    LENGTH = "length"
    EOS = "eos_token"
    STOP = "stop_sequence"
    ERROR = "error"
    CANCELLED = "cancelled"


TopLogprobs = list[tuple[int, float]]  # (token id, log-prob), most likely first


@dataclass
class TokenEvent:
    """One generated token. `text` is the text released at this step: empty while bytes of a
    multi-byte character or a possible stop sequence are held back, longer when they are
    released. Concatenating every event's text gives the final generated text. `log_prob`
    and `top` come from the model's raw logits (before penalties and temperature)."""

    id: int
    text: str
    log_prob: float
    top: TopLogprobs | None = None


@dataclass
class PromptLogprob:
    """One prompt token scored by the model; the first prompt token has no log-prob."""

    id: int
    log_prob: float | None
    top: TopLogprobs | None = None


@dataclass
class PromptEvent:
    """The prompt's log-probs, sent before the first token when `prompt_logprobs` is set."""

    tokens: list[PromptLogprob]


@dataclass
class FinishEvent:
    reason: FinishReason
    text: str  # the whole generated text (stop sequence removed)
    prompt_tokens: int
    generated_tokens: int
    error: str | None = None
    cumulative_logprob: float = 0.0  # sum of the generated tokens' log-probs (for best_of)
    seed: int | None = None


_ids = itertools.count(1)


@dataclass
class Sequence:
    """A request's state inside the engine. The samples of an `n`/`best_of` request are one
    sequence each; all but the first name the first as `fork_of`, so a backend that can share
    the prompt's cache (`Backend.fork`) prefills it once."""

    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    arrival: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    finish_reason: FinishReason | None = None
    fork_of: "Sequence | None" = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def total_tokens(self) -> int:
        """Tokens the KV cache must hold at most for this sequence."""
        return len(self.prompt_ids) + self.max_new_tokens
