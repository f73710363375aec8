"""OpenAI-compatible /v1/completions, /v1/chat/completions and /v1/models.

Sampling follows OpenAI: `temperature` 0 is greedy, otherwise sampled (default 1.0);
`max_tokens` defaults to the server's default max_new_tokens; `n` must be 1. Streaming is
server-sent events ending with `data: [DONE]`; `stream_options.include_usage` adds a last
chunk with usage. A failure mid-stream sends an `error` object before `[DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmi_runtime.engine.engine import RequestStream
from lmi_runtime.engine.request import FinishEvent, FinishReason, SamplingParams, TokenEvent
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
from lmi_runtime.server.schemas import ChatRequest, CompletionRequest, OpenAIBase

OPENAI_FINISH = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


def sampling_params(body: OpenAIBase, max_tokens: int | None) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=max_tokens,
        do_sample=body.temperature > 0,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
        stop=stop_list(body.stop),
    )


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _check(finish: FinishEvent) -> str:
    if finish.reason == FinishReason.ERROR:
        raise HTTPError(500, f"generation failed: {finish.error}")
    return OPENAI_FINISH[finish.reason]


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(
    stream: RequestStream,
    chunk: Callable[[str | None, str | None], dict],
    include_usage: bool,
) -> AsyncIterator[str]:
    """`chunk(text, finish_reason)` builds one chunk; the usage chunk and [DONE] close the stream."""
    async for event in stream:
        if isinstance(event, TokenEvent):
            if event.text:
                yield _sse(chunk(event.text, None))
            continue
        if event.reason == FinishReason.ERROR:
            yield _sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error"}})
        else:
            yield _sse(chunk(None, OPENAI_FINISH[event.reason]))
            if include_usage:
                yield _sse({**chunk(None, None), "choices": [], "usage": usage(event.prompt_tokens, event.generated_tokens)})
    yield "data: [DONE]\n\n"


def _header(kind: str, model: str) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model}


async def completions(state: ServerState, request: Request, raw: bytes) -> Response:
    body = parse_body(raw, CompletionRequest)
    state.ready()
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or any(not p for p in prompts):
        raise HTTPError(400, "'prompt' is empty", hint="send a non-empty prompt")
    params = sampling_params(body, body.max_tokens)
    model = body.model or state.info.name  # type: ignore[union-attr]
    if body.stream:
        if len(prompts) != 1:
            raise HTTPError(400, "streaming takes one prompt, not a list")
        stream = submit(state, encode(state, prompts[0]), params)
        head = _header("text_completion", model)

        def chunk(text: str | None, finish: str | None) -> dict:
            return {**head, "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]}

        include = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(stream, chunk, include), media_type="text/event-stream")
    streams = submit_all(state, [encode(state, p) for p in prompts], params)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    try:
        for index, stream in enumerate(streams):
            _, finish = await collect(stream)
            choices.append({"index": index, "text": finish.text, "logprobs": None, "finish_reason": _check(finish)})
            prompt_tokens += finish.prompt_tokens
            completion_tokens += finish.generated_tokens
    finally:
        for stream in streams:
            stream.cancel()
    return JSONResponse({**_header("text_completion", model), "choices": choices,
                         "usage": usage(prompt_tokens, completion_tokens)})


def chat_prompt(state: ServerState, body: ChatRequest) -> list[int]:
    tokenizer = state.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise HTTPError(400, "this model has no chat template", hint="use /v1/completions or 'inputs' instead")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)  # type: ignore[union-attr]
    return encode(state, text, special=False)


async def chat(state: ServerState, request: Request, raw: bytes) -> Response:
    body = parse_body(raw, ChatRequest)
    state.ready()
    params = sampling_params(body, body.max_completion_tokens or body.max_tokens)
    model = body.model or state.info.name  # type: ignore[union-attr]
    stream = submit(state, chat_prompt(state, body), params)
    if body.stream:
        head = _header("chat.completion.chunk", model)
        first = True

        def chunk(text: str | None, finish: str | None) -> dict:
            nonlocal first
            delta: dict = {} if text is None else {"content": text}
            if first and text is not None:
                delta, first = {"role": "assistant", **delta}, False
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        include = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(stream, chunk, include), media_type="text/event-stream")
    _, finish = await collect(stream)
    message = {"role": "assistant", "content": finish.text}
    return JSONResponse({
        **_header("chat.completion", model),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _check(finish)}],
        "usage": usage(finish.prompt_tokens, finish.generated_tokens),
    })


def register(router: APIRouter, state: ServerState) -> None:
    @router.post("/v1/completions")
    async def v1_completions(request: Request) -> Response:
        return await completions(state, request, await request.body())

    @router.post("/v1/chat/completions")
    async def v1_chat(request: Request) -> Response:
        return await chat(state, request, await request.body())

    @router.get("/v1/models")
    async def v1_models() -> dict:
        info = state.info
        data = [] if info is None else [{"id": info.name, "object": "model", "created": 0, "owned_by": "lmi-serve",
                                          "max_model_len": info.max_model_len}]
        return {"object": "list", "data": data}
