"""POST /invocations with the LMI schema.

`{"inputs": str | [str], "parameters": {...}, "stream": bool}` → `{"generated_text", "details"?}`
(a list of inputs → a list of results). A body with `messages` is an OpenAI chat request and a
body with `prompt` an OpenAI completion, as in LMI; with `OPTION_TGI_COMPAT=true` the answer
takes TGI's shapes (see `tgi.py`).

Streaming (`"stream": true`): JSON lines by default (`application/jsonlines`), one
`{"token": {"id", "text", "log_prob"}}` per line, the last line adding `generated_text` and
`details`; server-sent events (the same objects after `data:`) when the client sends
`Accept: text/event-stream`. A list of inputs streams them interleaved, each line carrying the
`index` of its input. A token's `text` may be empty while bytes of a character or a possible
stop sequence are held back; the texts always concatenate to `generated_text`. A failure
mid-stream ends with a token of id -1 and `finish_reason: "error"`.

`n`/`best_of` > 1 (non-streaming): that many samples are drawn (sharing the prompt's prefill
where the backend can); `generated_text` is the most likely one and, with `details`,
`details.best_of_sequences` lists the others.
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmi_runtime.engine.engine import RequestStream
from lmi_runtime.engine.request import FinishEvent, FinishReason, TokenEvent
from lmi_runtime.server import openai_api, tgi
from lmi_runtime.server.errors import HTTPError
from lmi_runtime.server.generation import (
    Outcome,
    collect_all,
    encode,
    failed,
    listed,
    ranked,
    submit,
)
from lmi_runtime.server.lmi_params import samples, sampling_params
from lmi_runtime.server.parsing import load_json, parse_strict
from lmi_runtime.server.schemas import LmiParameters, LmiRequest
from lmi_runtime.server.state import ServerState

JSONLINES = "application/jsonlines"
SSE = "text/event-stream"


def token_json(token: TokenEvent) -> dict:
    return {"id": token.id, "text": token.text, "log_prob": token.log_prob}


def details_json(finish: FinishEvent, inputs: str) -> dict:
    return {"finish_reason": finish.reason.value, "generated_tokens": finish.generated_tokens, "inputs": inputs}


async def result_json(state: ServerState, inputs: str, outs: list[Outcome], p: LmiParameters) -> dict:
    failed(outs)
    best, *others = ranked(outs, len(outs))
    out: dict = {"generated_text": (inputs if p.return_full_text else "") + best.finish.text}  # type: ignore[union-attr]
    if p.details:
        out["details"] = await _details(state, inputs, best, p)
        if others:
            out["details"]["best_of_sequences"] = [
                {"generated_text": o.finish.text, **await _details(state, inputs, o, p)} for o in others  # type: ignore[union-attr]
            ]
    return out


async def _details(state: ServerState, inputs: str, out: Outcome, p: LmiParameters) -> dict:
    details = {**details_json(out.finish, inputs), "tokens": [token_json(t) for t in out.tokens]}  # type: ignore[arg-type]
    if out.prompt is not None:
        details["prefill"] = await listed(state, [(t.id, t.log_prob) for t in out.prompt], "log_prob")
    if p.top_n_tokens:
        details["top_tokens"] = [await listed(state, t.top or [], "log_prob") for t in out.tokens]
    return details


async def stream_lines(state: ServerState, streams: list[RequestStream], inputs: list[str], p: LmiParameters,
                       sse: bool) -> AsyncIterator[str]:
    """Interleave the streams of every input (each line tagged with its `index` when there are
    several); hold each stream's token line back by one event so its last one can carry the
    final fields."""
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, stream: RequestStream) -> None:
        async for event in stream:
            await queue.put((index, event))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    pending: dict[int, dict] = {}
    tag = len(streams) > 1
    try:
        for _ in range(len(streams)):
            while True:
                index, event = await queue.get()
                if isinstance(event, TokenEvent):
                    if index in pending:
                        yield _frame(pending[index], sse)
                    pending[index] = {**({"index": index} if tag else {}), "token": token_json(event)}
                    if p.top_n_tokens and event.top:
                        pending[index]["top_tokens"] = await listed(state, event.top, "log_prob")
                    continue
                if isinstance(event, FinishEvent):
                    last = pending.pop(index, None)
                    if last is not None and event.reason == FinishReason.ERROR:
                        yield _frame(last, sse)
                    yield _frame(_final(last, event, inputs[index], index if tag else None, p), sse)
                    break
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            stream.cancel()


def _final(pending: dict | None, event: FinishEvent, inputs: str, index: int | None, p: LmiParameters) -> dict:
    final = {"generated_text": (inputs if p.return_full_text else "") + event.text, "details": details_json(event, inputs)}
    head = {} if index is None else {"index": index}
    if event.reason == FinishReason.ERROR:
        return {**head, "token": {"id": -1, "text": "", "log_prob": -1.0}, "error": event.error, **final}
    return {**(pending or {**head, "token": None}), **final}


def _frame(obj: dict, sse: bool) -> str:
    line = json.dumps(obj, ensure_ascii=False)
    return f"data: {line}\n\n" if sse else line + "\n"


def register(router: APIRouter, state: ServerState) -> None:
    @router.post("/invocations")
    async def invocations(request: Request) -> Response:
        raw = await request.body()
        probe = load_json(raw)
        if isinstance(probe, dict) and "messages" in probe:
            return await openai_api.chat(state, request, raw)
        if isinstance(probe, dict) and "prompt" in probe:
            return await openai_api.completions(state, request, raw)
        if state.tgi_compat:
            return await tgi.compat(state, request, raw)
        return await generate(state, request, raw)


async def generate(state: ServerState, request: Request, raw: bytes) -> Response:
    body = parse_strict(raw, LmiRequest)
    state.ready()
    params = sampling_params(body.parameters)
    inputs = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    if not inputs or any(not text for text in inputs):
        raise HTTPError(400, "'inputs' is empty", hint="send a non-empty string or list of strings")
    count = samples(body.parameters)
    if body.stream and count > 1:
        raise HTTPError(400, "'n'/'best_of' above 1 cannot stream", hint="send 'stream': false, or n 1")
    if body.stream and body.parameters.decoder_input_details:
        raise HTTPError(400, "'decoder_input_details' cannot stream (as in LMI)", hint="send 'stream': false")
    prompts = [await encode(state, text) for text in inputs]
    groups = submit(state, prompts, params, count)
    if body.stream:
        sse = SSE in request.headers.get("accept", "")
        streams = [group[0] for group in groups]
        return StreamingResponse(stream_lines(state, streams, inputs, body.parameters, sse),
                                 media_type=SSE if sse else JSONLINES)
    outs = await collect_all(request, [s for group in groups for s in group])
    results = [await result_json(state, text, outs[i * count:(i + 1) * count], body.parameters)
               for i, text in enumerate(inputs)]
    return JSONResponse(results[0] if isinstance(body.inputs, str) else results)
