"""Text Generation Inference compatibility: `POST /generate`, `POST /generate_stream`, `POST /`
(TGI's compat route, which `huggingface_hub.InferenceClient(base_url=...).text_generation`
calls) and `/invocations` under `OPTION_TGI_COMPAT=true`.

Request: LMI's `{"inputs": str, "parameters": {...}, "stream": bool}` (the same parameter rules,
`truncate` keeps the last N prompt tokens as TGI does). Answers in TGI's shapes:
`/generate` an object `{"generated_text", "details"?}` (events with `Accept: text/event-stream`), `/` and `/invocations` a list of one
such object (non-streaming); streaming is server-sent events, one
`{"index", "token": {"id", "text", "logprob", "special"}, "top_tokens"?, "generated_text",
"details"}` per token, the last one with `generated_text` and `details`
(`finish_reason`, `generated_tokens`, `input_length`, `seed`). `details` (non-streaming) holds
`prefill` (with `decoder_input_details`), `tokens`, `top_tokens` and `best_of_sequences`.
"""

from __future__ import annotations

import json
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmi_runtime.engine.engine import RequestStream
from lmi_runtime.engine.request import FinishEvent, FinishReason, TokenEvent
from lmi_runtime.server.errors import HTTPError
from lmi_runtime.server.generation import Outcome, collect_all, encode, failed, listed, ranked, submit
from lmi_runtime.server.lmi_params import samples, sampling_params
from lmi_runtime.server.parsing import parse_strict
from lmi_runtime.server.schemas import LmiParameters, LmiRequest
from lmi_runtime.server.state import ServerState

SSE = "text/event-stream"


def _special(state: ServerState) -> set[int]:
    return set(getattr(state.tokenizer, "all_special_ids", []))


def token_json(state: ServerState, token: TokenEvent) -> dict:
    return {"id": token.id, "text": token.text, "logprob": token.log_prob, "special": token.id in _special(state)}


async def _tops(state: ServerState, top: list[tuple[int, float]]) -> list[dict]:
    special = _special(state)
    return [{**item, "special": item["id"] in special} for item in await listed(state, top, "logprob")]


async def _sequence(state: ServerState, inputs: str, out: Outcome, p: LmiParameters) -> dict:
    finish: FinishEvent = out.finish  # type: ignore[assignment]
    prefill = [] if out.prompt is None else await listed(state, [(t.id, t.log_prob) for t in out.prompt], "logprob")
    seq = {
        "generated_text": (inputs if p.return_full_text else "") + finish.text,
        "finish_reason": finish.reason.value,
        "generated_tokens": finish.generated_tokens,
        "seed": finish.seed,
        "prefill": prefill,
        "tokens": [token_json(state, t) for t in out.tokens],
    }
    if p.top_n_tokens:
        seq["top_tokens"] = [await _tops(state, t.top or []) for t in out.tokens]
    return seq


async def _result(state: ServerState, inputs: str, outs: list[Outcome], p: LmiParameters) -> dict:
    failed(outs)
    best, *others = ranked(outs, len(outs))
    seq = await _sequence(state, inputs, best, p)
    text = seq.pop("generated_text")
    if not p.details:
        return {"generated_text": text}
    if others:
        seq["best_of_sequences"] = [await _sequence(state, inputs, o, p) for o in others]
    return {"generated_text": text, "details": seq}


async def _events(state: ServerState, stream: RequestStream, inputs: str, prompt_tokens: int,
                  p: LmiParameters) -> AsyncIterator[str]:
    index = 0
    pending: dict | None = None
    async for event in stream:
        if isinstance(event, TokenEvent):
            if pending is not None:
                yield _sse(pending)
            pending = {"index": index, "token": token_json(state, event), "generated_text": None, "details": None}
            if p.top_n_tokens:
                pending["top_tokens"] = await _tops(state, event.top or [])
            index += 1
        elif isinstance(event, FinishEvent):
            if event.reason == FinishReason.ERROR:
                if pending is not None:
                    yield _sse(pending)
                yield _sse({"error": f"generation failed: {event.error}", "error_type": "generation"})
                return
            last = pending or {"index": index, "token": {"id": -1, "text": "", "logprob": 0.0, "special": True}}
            last["generated_text"] = (inputs if p.return_full_text else "") + event.text
            last["details"] = {"finish_reason": event.reason.value, "generated_tokens": event.generated_tokens,
                               "input_length": prompt_tokens, "seed": event.seed}
            yield _sse(last)


def _sse(obj: dict) -> str:
    return f"data:{json.dumps(obj, ensure_ascii=False)}\n\n"


async def run(state: ServerState, request: Request, raw: bytes, stream: bool | None, as_list: bool) -> Response:
    """One TGI request; `stream` None: as the body says."""
    body = parse_strict(raw, LmiRequest)
    state.ready()
    if not isinstance(body.inputs, str) or not body.inputs:
        raise HTTPError(422, "'inputs' must be a non-empty string here", param="inputs")
    p = body.parameters
    params = sampling_params(p)
    ids = await encode(state, body.inputs)
    if p.truncate is not None and p.truncate > 0:
        ids = ids[-p.truncate:]
    streaming = body.stream if stream is None else stream
    count = samples(p)
    if streaming and count > 1:
        raise HTTPError(422, "'best_of' above 1 cannot stream", param="best_of")
    [group] = submit(state, [ids], params, count)
    if streaming:
        return StreamingResponse(_events(state, group[0], body.inputs, len(ids), p), media_type=SSE)
    result = await _result(state, body.inputs, await collect_all(request, group), p)
    return JSONResponse([result] if as_list else result)


async def compat(state: ServerState, request: Request, raw: bytes) -> Response:
    """TGI's `/` route (and /invocations under OPTION_TGI_COMPAT): a list when not streaming."""
    return await run(state, request, raw, None, as_list=True)


def register(router: APIRouter, state: ServerState) -> None:
    @router.post("/generate")
    async def generate(request: Request) -> Response:
        streaming = SSE in request.headers.get("accept", "")  # a client asking for events gets them
        return await run(state, request, await request.body(), streaming, as_list=False)

    @router.post("/generate_stream")
    async def generate_stream(request: Request) -> Response:
        return await run(state, request, await request.body(), True, as_list=False)

    @router.post("/")
    async def root(request: Request) -> Response:
        return await compat(state, request, await request.body())
