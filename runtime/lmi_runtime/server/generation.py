"""What every API family does around the engine: tokenize off the event loop, submit (all
prompts or none), collect events, and give the slots back at once when the client leaves."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.requests import Request

from lmi_runtime.engine.engine import RequestStream
from lmi_runtime.engine.request import (
    FinishEvent,
    PromptEvent,
    PromptLogprob,
    RequestRejected,
    SamplingParams,
    TokenEvent,
)
from lmi_runtime.server.errors import HTTPError
from lmi_runtime.server.state import ServerState


class ClientGone(Exception):
    """The client closed the connection before its answer was ready (a 499 in the metrics)."""


async def encode(state: ServerState, text: str, special: bool = True) -> list[int]:
    """Tokenize in a worker thread: a multi-megabyte prompt must not stall /ping or other requests."""
    tokenizer = state.tokenizer
    return await asyncio.to_thread(lambda: list(tokenizer(text, add_special_tokens=special)["input_ids"]))  # type: ignore[misc,operator]


async def decode_each(state: ServerState, ids: list[int]) -> list[str]:
    """Each token's own text (for log-prob listings)."""
    tokenizer = state.tokenizer
    return await asyncio.to_thread(lambda: [tokenizer.decode([i]) for i in ids])  # type: ignore[attr-defined]


async def listed(state: ServerState, scored: list[tuple[int, float | None]], key: str) -> list[dict]:
    """`[{"id", "text", key: log-prob}]`, each with the token's own text (LMI: `log_prob`, TGI: `logprob`)."""
    texts = await decode_each(state, [i for i, _ in scored])
    return [{"id": i, "text": t, key: lp} for (i, lp), t in zip(scored, texts)]


def stop_list(*values: str | list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values:
        if value is not None:
            out += [value] if isinstance(value, str) else value
    return out


def submit(state: ServerState, prompts: list[list[int]], params: SamplingParams, samples: int = 1) -> list[list[RequestStream]]:
    """Submit `samples` samples of every prompt, or none: a rejection cancels those queued."""
    engine = state.ready()
    groups: list[list[RequestStream]] = []
    try:
        for ids in prompts:
            groups.append(engine.submit(ids, params, samples))
    except RequestRejected as err:
        cancel([s for group in groups for s in group])
        raise HTTPError(err.status, err.message, err.hint) from err
    return groups


def cancel(streams: list[RequestStream]) -> None:
    for stream in streams:
        stream.cancel()


@dataclass
class Outcome:
    """Everything one sample produced."""

    tokens: list[TokenEvent] = field(default_factory=list)
    prompt: list[PromptLogprob] | None = None
    finish: FinishEvent | None = None


async def collect(stream: RequestStream) -> Outcome:
    out = Outcome()
    async for event in stream:
        if isinstance(event, TokenEvent):
            out.tokens.append(event)
        elif isinstance(event, PromptEvent):
            out.prompt = event.tokens
        else:
            out.finish = event
            return out
    raise RuntimeError("the engine closed a stream without finishing it")


async def collect_all(request: Request, streams: list[RequestStream]) -> list[Outcome]:
    """Collect every stream, unless the client disconnects first: then cancel them all at
    once (their slots are free before the next step) and raise ClientGone."""
    gathered = asyncio.ensure_future(asyncio.gather(*(collect(s) for s in streams)))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({gathered, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not gathered.done():
            raise ClientGone()
        return gathered.result()
    finally:
        gone.cancel()
        if not gathered.done():
            gathered.add_done_callback(_settle)
            gathered.cancel()
        cancel(streams)


def _settle(future: asyncio.Future) -> None:
    """Take the CancelledError of an abandoned collection, so asyncio does not report it."""
    if not future.cancelled():
        future.exception()


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read, so the next ASGI message is
    the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def ranked(outcomes: list[Outcome], keep: int) -> list[Outcome]:
    """The `keep` most likely samples (by cumulative log-prob), most likely first (best_of)."""
    return sorted(outcomes, key=lambda o: o.finish.cumulative_logprob, reverse=True)[:keep]  # type: ignore[union-attr]


def failed(outcomes: list[Outcome]) -> None:
    """A failed sample fails a non-streaming request: 500 with the engine's error."""
    for out in outcomes:
        if out.finish is not None and out.finish.error is not None:
            raise HTTPError(500, f"generation failed: {out.finish.error}")


def engine_params(status: int, **values) -> SamplingParams:
    """Build the engine's parameters; a value out of its sane range is a `status` naming it."""
    try:
        return SamplingParams(**values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HTTPError(status, f"invalid request: '{where}': {first['msg']}", param=where) from err
