"""The engine: a synchronous `LLMEngine.step()` and `AsyncEngine`, its asyncio face.

Why a background thread (and not an asyncio task with an executor): a step is a blocking
torch call that releases the GIL inside its kernels, and the loop must keep stepping whatever
the HTTP side does. One dedicated thread runs `step()` while there is work and sleeps on a
condition variable otherwise; the HTTP coroutines only enqueue requests (`submit`, which
rejects at once when the queue is full or the request can never fit) and read their own
`asyncio.Queue`. The thread hands a step's events over in one `loop.call_soon_threadsafe`
call per event loop (not one per token: on a small CPU every wake-up of the HTTP thread
takes time from the model's threads). A client that
goes away closes its stream, which asks the thread to abort the sequence and free its slot
before the next step.

A step: drop aborted sequences; admit waiting ones (continuous batching; with at most
`max_prefill_tokens` prompt tokens a step, else the backend's `prefill_tokens`, so that a burst
of long prompts joins over several steps and the running sequences decode between them); score
the prompts that asked for prompt log-probs (`Backend.score`); prefill the newly admitted (the extra
samples of an `n`/`best_of` request share their first sample's prefill when the backend can
`fork`) and take their first token; queue one batched decode step + sampling over every
running sequence (a backend that `decodes_ahead` gets the tokens the previous step sampled
without a host round trip; for others those tokens are read at the start of the step); read
the previous step's tokens (the host waits for the GPU here) and end the sequences that
reached an end token or their length; then, while the GPU runs the queued step, turn the
tokens taken into text (stop sequences) and events. A stop sequence is so found one step late: the token queued meanwhile
for that sequence is dropped unread (vLLM's async scheduling works the same way). On the CPU,
where a forward runs inside the call and nothing overlaps it, the first tokens go out before
the decode forward and a step's tokens in that step (time to first token on the bundled model,
2 cores, one request: 80 ms against 142 a step late; tokens/s unchanged). A batch
whose forward pass or sampling raises is re-run one sequence at a time so that only the
failing request ends with `finish_reason="error"` while the rest of the batch carries on.

Admission can always finish: a request is queued only if its prompt + max_new_tokens fits
the context (`min(max_model_len, KV-cache capacity)`); otherwise it is rejected with the
numbers, or its max_new_tokens is clamped when the request allows it (OpenAI routes, when
the client did not set max_tokens). A sequence therefore always ends by "length" at the
latest, and it holds its KV room only while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, TypeVar

import torch

from lmi_runtime.engine.backend import Backend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from lmi_runtime.engine.request import (
    FinishEvent,
    FinishReason,
    PromptEvent,
    PromptLogprob,
    SEED_SPACE,
    RequestRejected,
    SamplingParams,
    Sequence,
    TokenEvent,
)
from lmi_runtime.engine.sampler import Ahead, Pick, Sampled, make_generator, sample, top_logprobs
from lmi_runtime.engine.scheduler import Scheduler
from lmi_runtime.metrics import Counter, Gauge, Histogram, Registry

log = logging.getLogger("lmi_runtime.engine")
Event = TokenEvent | PromptEvent | FinishEvent
T = TypeVar("T")
R = TypeVar("R")

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class _Active:
    """Engine-side state of one running request."""

    seq: Sequence
    sink: Callable[[Event], None]
    detok: IncrementalDetokenizer
    stopper: StopMatcher
    generator: torch.Generator | None
    text: list[str] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    unsent: list[Pick] = field(default_factory=list)  # tokens taken, not yet turned into text and events
    ending: FinishReason | None = None  # an end token or the length limit, found when the token was taken


class EngineMetrics:
    def __init__(self, scheduler: Scheduler, registry: Registry):
        self.registry = registry
        registry.add(Gauge("lmi_queue_depth", "Requests waiting for a slot.", lambda: scheduler.num_waiting))
        registry.add(Gauge("lmi_running_batch_size", "Sequences in the running batch.", lambda: scheduler.num_running))
        self.generated = registry.add(Counter("lmi_generated_tokens_total", "Tokens generated."))
        self.prompt = registry.add(Counter("lmi_prompt_tokens_total", "Prompt tokens prefilled."))
        self.finished = registry.add(Counter("lmi_engine_requests_finished_total", "Sequences finished, by reason."))
        self.ttft = registry.add(Histogram("lmi_time_to_first_token_seconds", "Arrival to first token.", TTFT_BUCKETS))
        self.batch = registry.add(Histogram("lmi_decode_batch_size", "Sequences per decode step.", BATCH_BUCKETS))


class LLMEngine:
    def __init__(self, backend: Backend, config: EngineConfig, registry: Registry | None = None):
        self.backend = backend
        self.config = config
        self.scheduler = Scheduler(config.max_batch_size, config.max_queue, backend.kv_manager)
        self.metrics = EngineMetrics(self.scheduler, registry or Registry())
        self.prompt_budget = self._prompt_budget()  # prompt tokens a step at most; None: no limit
        self._active: dict[int, _Active] = {}
        self._aborts: set[int] = set()
        self._abort_lock = threading.Lock()
        self._queued: dict[int, tuple[Sequence, Sampled, int]] = {}  # the decode step the GPU may still run
        self._unsent: list[_Active] = []  # states with tokens to emit, in the order they were taken
        # On the CPU a step's forward runs inside the call: nothing would overlap a queued step,
        # so its tokens go out in the step that made them, not one step late
        self._in_step = backend.device.type == "cpu"

    def _prompt_budget(self) -> int | None:
        return self.config.max_prefill_tokens or self.backend.prefill_tokens

    # ---- requests -------------------------------------------------------------------------
    def add_request(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        sink: Callable[[Event], None],
        fork_of: Sequence | None = None,
    ) -> Sequence:
        """Validate and enqueue; raise RequestRejected (with an HTTP status) when impossible.
        `fork_of`: another sample of the same request (see `Sequence.fork_of`)."""
        max_new = self._admissible_new_tokens(prompt_ids, params)
        vocab = self.backend.info.vocab_size
        unknown = [t for t in [*prompt_ids, *params.logit_bias] if not 0 <= t < vocab]
        if unknown:
            raise RequestRejected(f"token ids {unknown[:5]} are outside this model's vocabulary (0..{vocab - 1})",
                                  status=400, hint="send token ids of this model's tokenizer")
        seq = Sequence(prompt_ids, params, max_new_tokens=max_new, fork_of=fork_of)
        tokenizer = self.backend.tokenizer
        self._active[seq.seq_id] = _Active(
            seq,
            sink,
            IncrementalDetokenizer(tokenizer, prompt_ids),  # type: ignore[arg-type]
            StopMatcher(params.stop),
            make_generator(params, self.backend.device),
        )
        try:
            self.scheduler.add(seq)
        except RequestRejected:
            del self._active[seq.seq_id]
            raise
        return seq

    def _admissible_new_tokens(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """How many tokens this request may generate: all it asks for, or a 400 with the numbers
        when prompt + max_new_tokens exceeds the context (clamped instead where allowed)."""
        limit = min(self.backend.info.max_model_len, self.scheduler.kv.max_reservable_tokens())
        prompt = len(prompt_ids)
        if not prompt_ids:
            raise RequestRejected("the prompt is empty", status=400, hint="send some text in 'inputs'")
        wanted = self.config.max_new_tokens if params.max_new_tokens is None else params.max_new_tokens
        if wanted == 0 and params.prompt_logprobs is None:
            raise RequestRejected("max_new_tokens 0 only scores the prompt; ask for prompt log-probs with it",
                                  status=400, hint="set 'echo' with 'logprobs' (OpenAI) or "
                                  "'decoder_input_details' (LMI), or ask for at least one token")
        if prompt + max(wanted, 1) <= limit:
            return wanted
        if prompt >= limit:
            raise RequestRejected(
                f"the prompt has {prompt} tokens; this model accepts at most {limit - 1} "
                f"(context {limit} tokens = prompt + new tokens, at least one new token)",
                status=413, hint="shorten the prompt",
            )
        if params.clamp_max_new_tokens:
            return limit - prompt
        raise RequestRejected(
            f"prompt ({prompt} tokens) + max_new_tokens ({wanted}) = {prompt + wanted} tokens exceeds "
            f"this model's context of {limit} tokens",
            status=400, hint=f"ask for at most {limit - prompt} new tokens, or shorten the prompt",
        )

    def abort(self, seq_id: int) -> None:
        with self._abort_lock:
            self._aborts.add(seq_id)

    def has_work(self) -> bool:
        return bool(self.scheduler.num_waiting or self.scheduler.num_running or self._aborts or self._queued)

    # ---- one iteration --------------------------------------------------------------------
    def step(self) -> None:
        self._drop_aborted()
        if not self.backend.decodes_ahead:
            self._take_queued()
        admitted = self._score_prompts(self.scheduler.admit(self.prompt_budget))
        if admitted:
            self.metrics.prompt.inc(sum(len(s.prompt_ids) for s in admitted))
            for seq, sampled, row in self._sample(self._prefill(admitted)):
                self._take(seq, sampled.picks()[row])
            if self._in_step:  # first tokens out before the decode forward, not after it
                self._emit_unsent()
        decoding = [s for s in self.scheduler.running if not self._queued_is_last(s)]
        launched = self._decode(decoding) if decoding else {}
        if decoding:
            self.metrics.batch.observe(len(decoding))
        self._take_queued()
        self._queued = launched
        if self._in_step:
            self._take_queued()
        self._emit_unsent()

    def _queued_is_last(self, seq: Sequence) -> bool:
        """The token queued for `seq` reaches its length: no step after it."""
        return seq.seq_id in self._queued and len(seq.output_ids) + 1 >= seq.max_new_tokens

    def _take_queued(self) -> None:
        """Wait for the queued decode step and take its tokens, skipping the sequences that
        ended meanwhile (a stop sequence, an abort, an end token found one step late)."""
        queued, self._queued = self._queued, {}
        for seq, sampled, row in queued.values():
            state = self._active.get(seq.seq_id)
            if state is not None and state.ending is None:
                self._take(seq, sampled.picks()[row])

    def _decode(self, seqs: list[Sequence]) -> dict[int, tuple[Sequence, Sampled, int]]:
        """Queue one decode step and its sampling. Sequences with a queued token get it as
        input on the device (`ahead`). If the batch raises, the queued tokens are taken first,
        then the batch runs again from the host's tokens through `_isolated` (one by one if it
        raises again) so that only the culprit fails."""
        ahead: Ahead = {s.seq_id: self._queued[s.seq_id][1:] for s in seqs if s.seq_id in self._queued}

        def run(batch: list[Sequence]) -> list[tuple[Sampled, int]]:
            logits = self.backend.decode(batch, ahead) if ahead else self.backend.decode(batch)
            sampled = self._pick(batch, logits)
            return [(sampled, row) for row in range(len(batch))]

        try:
            done: list[tuple[Sampled, int] | None] = list(run(seqs))
        except Exception:  # noqa: BLE001 - a backend failure must not take the batch down
            log.warning("decode batch of %d failed; retrying one by one", len(seqs), exc_info=True)
            self._take_queued()
            ahead.clear()
            seqs = [s for s in seqs if s.seq_id in self._active and self._active[s.seq_id].ending is None]
            done = self._isolated(seqs, run)
        return {seq.seq_id: (seq, *d) for seq, d in zip(seqs, done) if d is not None}

    def _score_prompts(self, admitted: list[Sequence]) -> list[Sequence]:
        """Send the prompt log-probs of those that asked; return those that go on to generate."""
        for seq in [s for s in admitted if s.params.prompt_logprobs is not None]:
            try:
                self._send_prompt_logprobs(seq)
            except Exception:  # noqa: BLE001 - fails this request only
                self._fail(seq, self._error_text())
                continue
            if seq.max_new_tokens == 0:
                self._finish(seq, FinishReason.LENGTH)
        return [s for s in admitted if s.seq_id in self._active and s.max_new_tokens > 0]

    def _send_prompt_logprobs(self, seq: Sequence) -> None:
        logprobs = torch.log_softmax(self.backend.score(seq.prompt_ids).float(), dim=-1)[:-1]
        targets = torch.tensor(seq.prompt_ids[1:], device=logprobs.device)
        chosen = logprobs[torch.arange(len(targets), device=logprobs.device), targets].tolist()
        n = seq.params.prompt_logprobs or 0
        tops = top_logprobs(logprobs, n) if n else [[] for _ in chosen]
        tokens = [PromptLogprob(seq.prompt_ids[0], None, None)]
        tokens += [PromptLogprob(t, lp, top) for t, lp, top in zip(seq.prompt_ids[1:], chosen, tops)]
        self._active[seq.seq_id].sink(PromptEvent(tokens))

    def _prefill(self, seqs: list[Sequence]) -> list[tuple[Sequence, torch.Tensor]]:
        """Prefill; an extra sample whose first sample is prefilled in this batch takes that
        prefill over (`Backend.fork`) when the backend can, else it is prefilled itself."""
        ids = {s.seq_id for s in seqs}
        forks = [s for s in seqs if s.fork_of is not None and s.fork_of.seq_id in ids]
        fork_ids = {s.seq_id for s in forks}
        ready = self._forward(self.backend.prefill, [s for s in seqs if s.seq_id not in fork_ids])
        rows = {seq.seq_id: row for seq, row in ready}
        late = []
        for child in forks:
            row = rows.get(child.fork_of.seq_id)  # type: ignore[union-attr]
            if row is not None and self._fork(child.fork_of, child):  # type: ignore[arg-type]
                ready.append((child, row))
            else:
                late.append(child)
        return ready + self._forward(self.backend.prefill, late) if late else ready

    def _fork(self, parent: Sequence, child: Sequence) -> bool:
        try:
            return self.backend.fork(parent, child)
        except Exception:  # noqa: BLE001 - a failed fork falls back to the child's own prefill
            log.warning("fork of sequence %d failed; prefilling it", child.seq_id, exc_info=True)
            return False

    def _forward(
        self, forward: Callable[[list[Sequence]], torch.Tensor], seqs: list[Sequence]
    ) -> list[tuple[Sequence, torch.Tensor]]:
        rows = self._isolated(seqs, lambda batch: list(forward(batch)))
        return [(seq, row) for seq, row in zip(seqs, rows) if row is not None]

    def _sample(self, ready: list[tuple[Sequence, torch.Tensor]]) -> list[tuple[Sequence, Sampled, int]]:
        """Sample each (sequence, logits row) pair (one by one if the batch raises)."""
        if not ready:
            return []

        def run(pairs: list[tuple[Sequence, torch.Tensor]]) -> list[tuple[Sampled, int]]:
            sampled = self._pick([s for s, _ in pairs], torch.stack([r for _, r in pairs]))
            return [(sampled, row) for row in range(len(pairs))]

        done = self._isolated(ready, run, seq_of=lambda pair: pair[0])
        return [(seq, *d) for (seq, _), d in zip(ready, done) if d is not None]

    def _pick(self, batch: list[Sequence], logits: torch.Tensor) -> Sampled:
        gens = {s.seq_id: self._active[s.seq_id].generator for s in batch}
        return sample(logits, batch, gens)

    def _isolated(
        self, items: list[T], fn: Callable[[list[T]], list[R]], seq_of: Callable[[T], Sequence] = lambda s: s
    ) -> list[R | None]:
        """Run `fn` on the whole batch; if it raises, run it item by item and fail only the
        sequences whose item raises alone (None in their place)."""
        try:
            return list(fn(items))
        except Exception:  # noqa: BLE001 - a backend failure must not take the batch down
            if len(items) == 1:
                self._fail(seq_of(items[0]), self._error_text())
                return [None]
            log.warning("batch of %d failed; retrying one by one", len(items), exc_info=True)
        results: list[R | None] = []
        for item in items:
            try:
                results.append(fn([item])[0])
            except Exception:  # noqa: BLE001
                self._fail(seq_of(item), self._error_text())
                results.append(None)
        return results

    @staticmethod
    def _error_text() -> str:
        """Describe the exception being handled (called inside an `except` block)."""
        err = sys.exc_info()[1]
        log.exception("request failed")
        return f"{type(err).__name__}: {err}"

    def _append(self, seq: Sequence, picked: Pick) -> None:
        """Take a token and emit its text and event at once."""
        self._take(seq, picked)
        self._emit_unsent()

    def _take(self, seq: Sequence, picked: Pick) -> None:
        """Add a token to its sequence; an end token or the length limit takes the sequence out
        of the running batch now, before the next step is queued. Text and events follow in
        `_emit_unsent`."""
        state = self._active[seq.seq_id]
        token = picked.token
        seq.output_ids.append(token)
        state.cumulative_logprob += picked.log_prob
        self.metrics.generated.inc()
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
            self.metrics.ttft.observe(seq.first_token_at - seq.arrival)
        if token in self.backend.info.eos_token_ids and not seq.params.ignore_eos:
            state.ending = FinishReason.EOS
        elif len(seq.output_ids) >= seq.max_new_tokens:
            state.ending = FinishReason.LENGTH
        if state.ending:
            self.scheduler.remove(seq)
        if not state.unsent:
            self._unsent.append(state)
        state.unsent.append(picked)

    def _emit_unsent(self) -> None:
        states, self._unsent = self._unsent, []
        for state in states:
            self._emit(state)

    def _emit(self, state: _Active) -> None:
        """Detokenize the taken tokens, match stop sequences and send one event per token;
        finish the sequence when it ended."""
        seq = state.seq
        while state.unsent and seq.seq_id in self._active:
            picked = state.unsent.pop(0)
            finish = state.ending if not state.unsent else None
            text = state.detok.add(picked.token)
            if finish:
                text += state.detok.flush()
            released, hit_stop = state.stopper.feed(text)
            if hit_stop:
                finish = FinishReason.STOP
                state.unsent.clear()
            elif finish:
                released += state.stopper.flush()
            state.text.append(released)
            state.sink(TokenEvent(picked.token, released, picked.log_prob, picked.top))
            if finish:
                self._finish(seq, finish)

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        state = self._active.get(seq.seq_id)
        if state is not None and state.unsent and reason is not FinishReason.STOP:
            self._emit(state)  # the tokens taken before the end go out first
        state = self._active.pop(seq.seq_id, None)
        self.scheduler.remove(seq)
        if state is None:
            return
        seq.finish_reason = reason
        self.metrics.finished.inc(reason=reason.value)
        state.sink(FinishEvent(reason, "".join(state.text), len(seq.prompt_ids), len(seq.output_ids), error,
                               state.cumulative_logprob, seq.params.seed))

    def _fail(self, seq: Sequence, error: str) -> None:
        self._finish(seq, FinishReason.ERROR, error)

    def _drop_aborted(self) -> None:
        with self._abort_lock:
            aborted, self._aborts = self._aborts, set()
        for seq_id in aborted:
            state = self._active.get(seq_id)
            if state is not None:
                self._finish(state.seq, FinishReason.CANCELLED)

    def fail_all(self, error: str) -> None:
        for state in list(self._active.values()):
            self._fail(state.seq, error)


class RequestStream:
    """The events of one request, as an async iterator; closing it early cancels the request."""

    def __init__(self, engine: "AsyncEngine", prompt_ids: list[int], params: SamplingParams,
                 fork_of: Sequence | None = None):
        self._engine = engine
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.seq = engine.engine.add_request(
            prompt_ids, params, lambda ev: engine.outbox.append((loop, self._queue, ev)), fork_of
        )
        self.done = False
        engine.wake()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        try:
            while not self.done:
                event = await self._queue.get()
                self.done = isinstance(event, FinishEvent)
                yield event
        finally:
            self.cancel()

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._engine.engine.abort(self.seq.seq_id)
            self._engine.wake()


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._cv = threading.Condition()
        self._stopping = False
        self.draining = False  # set by drain(): new requests get a 503
        self.outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, Event]] = []
        self._thread = threading.Thread(target=self._run, name="lmi-engine", daemon=True)

    def start(self) -> "AsyncEngine":
        self._thread.start()
        return self

    def submit(self, prompt_ids: list[int], params: SamplingParams, samples: int = 1) -> list[RequestStream]:
        """Enqueue `samples` samples of one prompt now, all or none (raises RequestRejected);
        iterate each stream for its events. Sample i of a seeded request uses seed + i."""
        if self.draining:
            raise RequestRejected("the server is shutting down and takes no new requests", status=503,
                                  hint="retry on another instance")
        streams: list[RequestStream] = []
        try:
            for i in range(samples):
                own = params if i == 0 or params.seed is None else params.model_copy(
                    update={"seed": (params.seed + i) % SEED_SPACE})
                streams.append(RequestStream(self, prompt_ids, own, streams[0].seq if streams else None))
        except RequestRejected:
            for stream in streams:
                stream.cancel()
            raise
        return streams

    def wake(self) -> None:
        with self._cv:
            self._cv.notify()

    def drain(self, timeout: float) -> int:
        """Graceful stop (SIGTERM): admit nothing new, let the requests in flight finish for up to
        `timeout` seconds, then fail the rest with a final error event saying so. Returns how
        many requests were failed; the engine thread is stopped afterwards."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.engine.has_work() and time.monotonic() < deadline:
            time.sleep(0.02)
        left = len(self.engine._active)
        self._stop_thread()
        self.engine.fail_all(f"the server is shutting down: the request did not finish within the {timeout:g} s drain deadline")
        self._deliver()
        return left

    def shutdown(self) -> None:
        self._stop_thread()
        self.engine.fail_all("the server is shutting down")
        self._deliver()

    def _stop_thread(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _deliver(self) -> None:
        """Hand the events of the last step to their event loops, one call per loop."""
        items, self.outbox = self.outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = {}
        for loop, queue, event in items:
            by_loop.setdefault(loop, []).append((queue, event))
        for loop, batch in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_put_all, batch)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self.engine.has_work():
                    self._cv.wait()
                if self._stopping:
                    return
            try:
                self.engine.step()
            except Exception as err:  # noqa: BLE001 - keep serving; fail what was in flight
                log.exception("engine step failed")
                self.engine.fail_all(f"{type(err).__name__}: {err}")
            self._deliver()


def _put_all(batch: list[tuple[asyncio.Queue, Event]]) -> None:
    for queue, event in batch:
        queue.put_nowait(event)
