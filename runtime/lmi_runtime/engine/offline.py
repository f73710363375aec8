"""Drive an `LLMEngine` synchronously, without HTTP or the engine thread: for checks against a
reference, benchmarks and batch jobs (like vLLM's offline `LLM.generate`).

Requests may join the running batch at a given step, so continuous batching (a sequence
admitted while others decode) is exercised exactly as the server does it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lmi_runtime.engine.engine import LLMEngine
from lmi_runtime.engine.request import FinishEvent, SamplingParams, TokenEvent


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)  # perf_counter at each token's arrival
    arrival: float = 0.0
    finish: FinishEvent | None = None

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first over the time they took (the decode rate one client sees)."""
        if len(self.token_times) < 2:
            return 0.0
        return (len(self.token_times) - 1) / (self.token_times[-1] - self.token_times[0])


def generate(engine: LLMEngine, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
             join_at_step: list[int] | None = None) -> list[Completion]:
    """Run every prompt to completion; prompt i is added before step `join_at_step[i]`, with
    `params` (or `params[i]`: requests of different lengths, say)."""
    joins = join_at_step or [0] * len(prompts)
    each = params if isinstance(params, list) else [params] * len(prompts)
    results = [Completion(list(p)) for p in prompts]

    def sink_for(result: Completion):
        def sink(event) -> None:
            if isinstance(event, TokenEvent):
                result.token_ids.append(event.id)
                result.token_times.append(time.perf_counter())
            elif isinstance(event, FinishEvent):
                result.finish = event
        return sink

    step = 0
    pending = sorted(range(len(prompts)), key=lambda i: joins[i])
    while pending or engine.has_work():
        while pending and joins[pending[0]] <= step:
            i = pending.pop(0)
            results[i].arrival = time.perf_counter()
            engine.add_request(results[i].prompt_ids, each[i], sink_for(results[i]))
        if engine.has_work():
            engine.step()
        step += 1
    return results
