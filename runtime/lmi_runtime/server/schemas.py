"""Request bodies. LMI and TGI models forbid unknown keys (a typo such as `max_new_token` gets a
422 naming it); OpenAI models allow them (see `parsing.py` for the policy). Every float must be
finite (`Infinity` and `NaN` are refused); ranges are checked again by `SamplingParams`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP = 20  # most alternatives per token (top_n_tokens, logprobs, top_logprobs), as vLLM


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class LmiParameters(Strict):
    """LMI's parameters (rolling batch and its vLLM extras) and TGI's. `do_sample` absent:
    sampling when `temperature`, `top_p` or `top_k` is given (LMI ≥ 0.32 rule), greedy otherwise."""

    max_new_tokens: int | None = Field(default=None, ge=1)
    do_sample: bool | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=100.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)  # -1 or 0: off (vLLM's -1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, ge=0.01, le=100.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_sequences: list[str] | None = None  # TGI's name, merged with `stop`
    ignore_eos_token: bool = False
    details: bool = False
    decoder_input_details: bool = False
    top_n_tokens: int | None = Field(default=None, ge=0, le=MAX_TOP)
    return_full_text: bool = False
    n: int = Field(default=1, ge=1, le=16)
    best_of: int | None = Field(default=None, ge=1, le=16)
    # TGI fields huggingface_hub may send; accepted only with their neutral values
    truncate: int | None = None
    typical_p: float | None = Field(default=None, gt=0.0, le=1.0)
    watermark: bool = False


class LmiRequest(Strict):
    inputs: str | list[str]
    parameters: LmiParameters = Field(default_factory=LmiParameters)
    stream: bool = False


class StreamOptions(Lenient):
    include_usage: bool = False


class OpenAIBase(Lenient):
    """Fields shared by /v1/completions and /v1/chat/completions; `top_k`, `min_p`,
    `repetition_penalty` and `ignore_eos` are extensions (as in vLLM). Any `model` name is
    accepted: this server serves one model."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, ge=0.01, le=100.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(OpenAIBase):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)
    best_of: int | None = Field(default=None, ge=1, le=16)


class ContentPart(Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(Lenient):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.text for part in self.content)


class ChatRequest(OpenAIBase):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP)
