"""OpenAI-compatible /v1/completions, /v1/chat/completions and /v1/models, in OpenAI's and
vLLM's response shapes.

Sampling follows OpenAI: `temperature` 0 is greedy, otherwise sampled (default 1.0). Length:
when the client sets `max_tokens` (or `max_completion_tokens`) and prompt + that exceeds the
context, the answer is a 400 with the numbers; when it does not, the server default
(`--max-new-tokens`) is clamped to what fits. Completions take text or token-id prompts
(`str`, `[str]`, `[int]`, `[[int]]`), `logprobs: N` (the chosen token and the N most likely,
from the raw logits), `echo` (the prompt is returned, with its log-probs when `logprobs` is
set) and `max_tokens: 0` with `echo` (score the prompt only: what lm-eval's loglikelihood
tasks send). Chat takes `logprobs` + `top_logprobs`. `n` samples per prompt (non-streaming),
`best_of` keeps the `n` most likely of `best_of` samples; a seeded request gives sample i the
seed + i. Streaming is server-sent events ending with `data: [DONE]`;
`stream_options.include_usage` adds a last chunk with usage. A failure mid-stream sends an
`error` object before `[DONE]`. Unknown fields: see `parsing.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lmi_runtime.engine.engine import RequestStream
from lmi_runtime.engine.request import FinishEvent, FinishReason, PromptEvent, PromptLogprob, SamplingParams, TokenEvent
from lmi_runtime.server.errors import HTTPError
from lmi_runtime.server.generation import (
    Outcome,
    collect_all,
    decode_each,
    encode,
    engine_params,
    failed,
    ranked,
    stop_list,
    submit,
)
from lmi_runtime.server.parsing import IGNORED_HEADER, parse_openai
from lmi_runtime.server.schemas import ChatRequest, CompletionRequest, OpenAIBase
from lmi_runtime.server.state import ServerState

OPENAI_FINISH = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}
Scored = tuple[int, float | None, list[tuple[int, float]] | None]  # token, its log-prob, top-N


def sampling_params(body: OpenAIBase, max_tokens: int | None, logprobs: int | None = None,
                    prompt_logprobs: int | None = None) -> SamplingParams:
    try:
        bias = {int(k): v for k, v in (body.logit_bias or {}).items()}
    except ValueError as err:
        raise HTTPError(400, "'logit_bias' keys must be token ids", param="logit_bias") from err
    return engine_params(
        400,
        max_new_tokens=max_tokens,
        clamp_max_new_tokens=max_tokens is None,
        do_sample=body.temperature > 0,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=max(body.top_k, 0),
        min_p=body.min_p,
        repetition_penalty=body.repetition_penalty,
        frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty,
        logit_bias=bias,
        ignore_eos=body.ignore_eos,
        seed=body.seed,
        stop=stop_list(body.stop),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(finish: FinishEvent) -> str:
    return OPENAI_FINISH[finish.reason]


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _header(kind: str, model: str) -> dict:
    prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model}


def _respond(content: dict, ignored: list[str]) -> JSONResponse:
    return JSONResponse(content, headers={IGNORED_HEADER: ", ".join(ignored)} if ignored else None)


def _scored(tokens: list[TokenEvent]) -> list[Scored]:
    return [(t.id, t.log_prob, t.top) for t in tokens]


def _prompt_scored(prompt: list[PromptLogprob]) -> list[Scored]:
    return [(t.id, t.log_prob, t.top) for t in prompt]


async def _texts(state: ServerState, entries: list[Scored]) -> dict[int, str]:
    ids = sorted({i for i, _, top in entries for i in [i, *(j for j, _ in top or [])]})
    return dict(zip(ids, await decode_each(state, ids)))


async def completion_logprobs(state: ServerState, entries: list[Scored], offset: int = 0) -> dict:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs (the chosen
    token included, as vLLM does), text_offset (into the returned text)."""
    text = await _texts(state, entries)
    tokens, offsets = [], []
    for token, _, _ in entries:
        tokens.append(text[token])
        offsets.append(offset)
        offset += len(text[token])
    tops = [None if lp is None else {**{text[j]: v for j, v in top or []}, text[token]: lp}
            for token, lp, top in entries]
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries], "top_logprobs": tops,
            "text_offset": offsets}


async def chat_logprobs(state: ServerState, entries: list[Scored]) -> dict:
    """Chat's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    text = await _texts(state, entries)

    def item(token: int, lp: float | None) -> dict:
        return {"token": text[token], "logprob": lp, "bytes": list(text[token].encode())}

    return {"content": [{**item(t, lp), "top_logprobs": [item(j, v) for j, v in top or []]}
                        for t, lp, top in entries]}


async def _stream(
    stream: RequestStream,
    chunk: Callable[[str | None, list[TokenEvent], str | None], Awaitable[dict]],
    include_usage: bool,
    on_prompt: Callable[[list[PromptLogprob]], Awaitable[dict]] | None = None,
) -> AsyncIterator[str]:
    """`chunk(text, tokens, finish_reason)` builds one chunk (tokens: those whose text it
    releases, for log-probs); the usage chunk and [DONE] close the stream."""
    held: list[TokenEvent] = []
    async for event in stream:
        if isinstance(event, PromptEvent):
            if on_prompt is not None:
                yield _sse(await on_prompt(event.tokens))
            continue
        if isinstance(event, TokenEvent):
            held.append(event)
            if event.text:
                yield _sse(await chunk(event.text, held, None))
                held = []
            continue
        if event.reason == FinishReason.ERROR:
            yield _sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error",
                                  "param": None, "code": None}})
        else:
            yield _sse(await chunk(None, held, _finish_reason(event)))
            if include_usage:
                last = await chunk(None, [], None)
                yield _sse({**last, "choices": [], "usage": usage(event.prompt_tokens, event.generated_tokens)})
    yield "data: [DONE]\n\n"


async def _prompts(state: ServerState, prompt: str | list) -> tuple[list[list[int]], list[str]]:
    """Token ids and text of every prompt (text or token ids)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt or any(not isinstance(p, int) and len(p) == 0 for p in prompt):
        raise HTTPError(400, "'prompt' is empty", param="prompt", hint="send a non-empty prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    if isinstance(prompt[0], str):
        return [await encode(state, p) for p in prompt], list(prompt)
    tokenizer = state.tokenizer
    texts = await asyncio.to_thread(lambda: [tokenizer.decode(ids) for ids in prompt])  # type: ignore[attr-defined]
    return [list(ids) for ids in prompt], texts


def _samples(n: int, best_of: int | None, stream: bool) -> int:
    count = best_of or n
    if count < n:
        raise HTTPError(400, f"'best_of' ({best_of}) must be at least 'n' ({n})", param="best_of")
    if stream and count > 1:
        raise HTTPError(400, "'n'/'best_of' above 1 cannot stream", param="n", hint="send 'stream': false")
    return count


async def completions(state: ServerState, request: Request, raw: bytes) -> Response:
    body, ignored = parse_openai(raw, CompletionRequest, state.strict_params)
    state.ready()
    ids, texts = await _prompts(state, body.prompt)
    count = _samples(body.n, body.best_of, body.stream)
    scoring = body.echo and (body.logprobs is not None or body.max_tokens == 0)
    if body.max_tokens == 0 and not body.echo:
        raise HTTPError(400, "'max_tokens' 0 generates nothing; with 'echo' it scores the prompt", param="max_tokens")
    params = sampling_params(body, body.max_tokens, body.logprobs,
                             (body.logprobs or 0) if scoring else None)
    model = body.model or state.info.name  # type: ignore[union-attr]
    groups = submit(state, ids, params, count)
    if body.stream:
        return _stream_completion(state, groups[0][0], texts[0], body, model, ignored)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    outs = await collect_all(request, [s for group in groups for s in group])
    failed(outs)
    for p, text in enumerate(texts):
        group = outs[p * count:(p + 1) * count]
        prompt_tokens += group[0].finish.prompt_tokens  # type: ignore[union-attr]
        completion_tokens += sum(o.finish.generated_tokens for o in group)  # type: ignore[union-attr]
        for j, out in enumerate(ranked(group, body.n) if count > body.n else group):
            choices.append(await _completion_choice(state, p * body.n + j, text, out, body))
    return _respond({**_header("text_completion", model), "choices": choices,
                     "usage": usage(prompt_tokens, completion_tokens)}, ignored)


async def _completion_choice(state: ServerState, index: int, prompt: str, out: Outcome, body: CompletionRequest) -> dict:
    finish: FinishEvent = out.finish  # type: ignore[assignment]
    logprobs = None
    if body.logprobs is not None:
        entries = (_prompt_scored(out.prompt) if body.echo and out.prompt else []) + _scored(out.tokens)
        logprobs = await completion_logprobs(state, entries)
    return {"index": index, "text": (prompt if body.echo else "") + finish.text, "logprobs": logprobs,
            "finish_reason": _finish_reason(finish), "stop_reason": None}


def _stream_completion(state: ServerState, stream: RequestStream, prompt: str, body: CompletionRequest,
                       model: str, ignored: list[str]) -> StreamingResponse:
    head = _header("text_completion", model)
    offset = 0

    async def chunk(text: str | None, tokens: list[TokenEvent], finish: str | None) -> dict:
        nonlocal offset
        logprobs = None
        if body.logprobs is not None and tokens:
            logprobs = await completion_logprobs(state, _scored(tokens), offset)
        offset += len(text or "")
        return {**head, "choices": [{"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}]}

    async def on_prompt(tokens: list[PromptLogprob]) -> dict:
        nonlocal offset
        logprobs = await completion_logprobs(state, _prompt_scored(tokens)) if body.logprobs is not None else None
        offset = len(prompt)
        return {**head, "choices": [{"index": 0, "text": prompt, "logprobs": logprobs, "finish_reason": None}]}

    async def events() -> AsyncIterator[str]:
        nonlocal offset
        if body.echo and stream.seq.params.prompt_logprobs is None:
            offset = len(prompt)
            yield _sse({**head, "choices": [{"index": 0, "text": prompt, "logprobs": None, "finish_reason": None}]})
        include = bool(body.stream_options and body.stream_options.include_usage)
        async for line in _stream(stream, chunk, include, on_prompt if body.echo else None):
            yield line

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={IGNORED_HEADER: ", ".join(ignored)} if ignored else None)


async def chat_prompt(state: ServerState, body: ChatRequest) -> list[int]:
    tokenizer = state.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise HTTPError(400, "this model has no chat template", hint="use /v1/completions or 'inputs' instead")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    text = await asyncio.to_thread(
        tokenizer.apply_chat_template, messages, add_generation_prompt=True, tokenize=False)  # type: ignore[union-attr]
    return await encode(state, text, special=False)


async def chat(state: ServerState, request: Request, raw: bytes) -> Response:
    body, ignored = parse_openai(raw, ChatRequest, state.strict_params)
    state.ready()
    top = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if max_tokens == 0:
        raise HTTPError(400, "'max_tokens' must be at least 1 for chat", param="max_tokens")
    params = sampling_params(body, max_tokens, top)
    count = _samples(body.n, None, body.stream)
    model = body.model or state.info.name  # type: ignore[union-attr]
    [group] = submit(state, [await chat_prompt(state, body)], params, count)
    if body.stream:
        head = _header("chat.completion.chunk", model)
        first = True

        async def chunk(text: str | None, tokens: list[TokenEvent], finish: str | None) -> dict:
            nonlocal first
            delta: dict = {} if text is None else {"content": text}
            if first and text is not None:
                delta, first = {"role": "assistant", **delta}, False
            logprobs = await chat_logprobs(state, _scored(tokens)) if top is not None and tokens else None
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

        include = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(group[0], chunk, include), media_type="text/event-stream",
                                 headers={IGNORED_HEADER: ", ".join(ignored)} if ignored else None)
    outs = await collect_all(request, group)
    failed(outs)
    choices = []
    for index, out in enumerate(outs):
        finish: FinishEvent = out.finish  # type: ignore[assignment]
        logprobs = await chat_logprobs(state, _scored(out.tokens)) if top is not None else None
        choices.append({"index": index, "message": {"role": "assistant", "content": finish.text},
                        "logprobs": logprobs, "finish_reason": _finish_reason(finish)})
    return _respond({
        **_header("chat.completion", model),
        "choices": choices,
        "usage": usage(outs[0].finish.prompt_tokens, sum(o.finish.generated_tokens for o in outs)),  # type: ignore[union-attr]
    }, ignored)


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
