"""What the LMI and OpenAI handlers share: server state, body parsing with clear 4xx errors,
submission to the engine, and collecting a request's events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from lmi_runtime.backends.base import ModelInfo
from lmi_runtime.engine.engine import AsyncEngine, RequestStream
from lmi_runtime.engine.request import FinishEvent, RequestRejected, SamplingParams, TokenEvent
from lmi_runtime.metrics import Registry

M = TypeVar("M", bound=BaseModel)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, hint: str | None = None):
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint

    def body(self) -> dict:
        return {"error": self.message, **({"hint": self.hint} if self.hint else {})}


@dataclass
class ServerState:
    """Filled in when the model has loaded; until then /ping answers 503."""

    registry: Registry = field(default_factory=Registry)
    engine: AsyncEngine | None = None
    info: ModelInfo | None = None
    tokenizer: object | None = None
    load_error: str | None = None

    def ready(self) -> AsyncEngine:
        if self.engine is None:
            raise HTTPError(503, self.load_error or "the model is still loading", hint="retry when /ping answers 200")
        return self.engine


def parse_body(raw: bytes, model: type[M]) -> M:
    try:
        data = json.loads(raw)
    except ValueError as err:
        raise HTTPError(400, f"the request body is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise HTTPError(422, "invalid request: " + "; ".join(_describe(e) for e in err.errors())) from err


def _describe(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "body"
    if error["type"] == "extra_forbidden":
        return f"unknown parameter '{where}'"
    if error["type"] == "missing":
        return f"'{where}' is required"
    return f"'{where}': {error['msg']} (got {json.dumps(error.get('input'), default=str)[:80]})"


def encode(state: ServerState, text: str, special: bool = True) -> list[int]:
    return list(state.tokenizer(text, add_special_tokens=special)["input_ids"])  # type: ignore[misc]


def stop_list(*values: str | list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values:
        if value is not None:
            out += [value] if isinstance(value, str) else value
    return out


def submit(state: ServerState, prompt_ids: list[int], params: SamplingParams) -> RequestStream:
    try:
        return state.ready().submit(prompt_ids, params)
    except RequestRejected as err:
        raise HTTPError(err.status, err.message, err.hint) from err


def submit_all(state: ServerState, prompts: list[list[int]], params: SamplingParams) -> list[RequestStream]:
    """Submit every prompt or none: a rejection cancels those already queued."""
    streams: list[RequestStream] = []
    try:
        for ids in prompts:
            streams.append(submit(state, ids, params))
    except HTTPError:
        for stream in streams:
            stream.cancel()
        raise
    return streams


async def collect(stream: RequestStream) -> tuple[list[TokenEvent], FinishEvent]:
    tokens: list[TokenEvent] = []
    async for event in stream:
        if isinstance(event, TokenEvent):
            tokens.append(event)
        else:
            return tokens, event
    raise RuntimeError("the engine closed a stream without finishing it")
