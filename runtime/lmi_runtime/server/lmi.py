"""POST /invocations with the LMI schema.

`{"inputs": str | [str], "parameters": {...}, "stream": bool}` → `{"generated_text", "details"?}`
(a list of inputs → a list of results). A body with `messages` is an OpenAI chat request and a
body with `prompt` an OpenAI completion, as in LMI.

Streaming (`"stream": true`, one input): JSON lines by default (`application/jsonlines`), one
`{"token": {"id", "text", "log_prob"}}` per line, the last line adding `generated_text` and
`details`; server-sent events (the same objects after `data:`) when the client sends
`Accept: text/event-stream`. A token's `text` may be empty while bytes of a character or a
possible stop sequence are held back; the texts always concatenate to `generated_text`.
A failure mid-stream ends with a token of id -1 and `finish_reason: "error"`.
"""

from __future__ import annotations

import json
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmi_runtime.engine.engine import RequestStream
from lmi_runtime.engine.request import FinishEvent, FinishReason, SamplingParams, TokenEvent
from lmi_runtime.server import openai_api
from lmi_runtime.server.common import (
    HTTPError,
    ServerState,
    collect,
    encode,
    parse_body,
    stop_list,
    submit,
    submit_all,
)
from lmi_runtime.server.schemas import LmiParameters, LmiRequest

JSONLINES = "application/jsonlines"
SSE = "text/event-stream"


def sampling_params(p: LmiParameters) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=p.max_new_tokens,
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
        stop=stop_list(p.stop, p.stop_sequences),
    )


def token_json(token: TokenEvent) -> dict:
    return {"id": token.id, "text": token.text, "log_prob": token.log_prob}


def details_json(finish: FinishEvent, inputs: str) -> dict:
    return {
        "finish_reason": finish.reason.value,
        "generated_tokens": finish.generated_tokens,
        "inputs": inputs,
    }


def result_json(inputs: str, tokens: list[TokenEvent], finish: FinishEvent, p: LmiParameters) -> dict:
    if finish.reason == FinishReason.ERROR:
        raise HTTPError(500, f"generation failed: {finish.error}")
    text = inputs + finish.text if p.return_full_text else finish.text
    out: dict = {"generated_text": text}
    if p.details:
        out["details"] = {**details_json(finish, inputs), "tokens": [token_json(t) for t in tokens]}
    return out


async def stream_lines(stream: RequestStream, inputs: str, p: LmiParameters, sse: bool) -> AsyncIterator[str]:
    """Hold each token line back by one event so the last one can carry the final fields."""
    pending: dict | None = None
    async for event in stream:
        if isinstance(event, TokenEvent):
            if pending is not None:
                yield _frame(pending, sse)
            pending = {"token": token_json(event)}
            continue
        final = {"generated_text": (inputs if p.return_full_text else "") + event.text,
                 "details": details_json(event, inputs)}
        if event.reason == FinishReason.ERROR:
            if pending is not None:
                yield _frame(pending, sse)
            pending = {"token": {"id": -1, "text": "", "log_prob": -1.0}, "error": event.error}
        yield _frame({**(pending or {"token": None}), **final}, sse)


def _frame(obj: dict, sse: bool) -> str:
    line = json.dumps(obj, ensure_ascii=False)
    return f"data: {line}\n\n" if sse else line + "\n"


def register(router: APIRouter, state: ServerState) -> None:
    @router.post("/invocations")
    async def invocations(request: Request) -> Response:
        raw = await request.body()
        try:
            probe = json.loads(raw)
        except ValueError:
            probe = None
        if isinstance(probe, dict) and "messages" in probe:
            return await openai_api.chat(state, request, raw)
        if isinstance(probe, dict) and "prompt" in probe:
            return await openai_api.completions(state, request, raw)
        body = parse_body(raw, LmiRequest)
        state.ready()
        params = sampling_params(body.parameters)
        inputs = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        if not inputs or any(not text for text in inputs):
            raise HTTPError(400, "'inputs' is empty", hint="send a non-empty string or list of strings")
        if body.stream:
            if len(inputs) != 1:
                raise HTTPError(400, "streaming takes one input, not a list", hint="send 'inputs' as a string")
            sse = SSE in request.headers.get("accept", "")
            stream = submit(state, encode(state, inputs[0]), params)
            return StreamingResponse(
                stream_lines(stream, inputs[0], body.parameters, sse), media_type=SSE if sse else JSONLINES
            )
        streams = submit_all(state, [encode(state, text) for text in inputs], params)
        try:
            results = [result_json(text, *(await collect(s)), body.parameters) for text, s in zip(inputs, streams)]
        finally:
            for stream in streams:
                stream.cancel()
        return JSONResponse(results[0] if isinstance(body.inputs, str) else results)
