"""A burst of long prompts under a per-step prompt budget (`max_prefill_tokens`), on the torch
backend with a tiny random Llama: the burst joins over several steps, a stream that was already
decoding gets a token in every one of them, and the greedy tokens are those of a run without a
budget."""

from __future__ import annotations

import pytest

from lmi_runtime.backends.loader import load_backend
from lmi_runtime.backends.torch_llama import TorchLlamaBackend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.engine import LLMEngine
from lmi_runtime.engine.request import SamplingParams, TokenEvent
from lmi_runtime.locate import inspect_folder
from tiny_llama import save_tiny_llama

BUDGET = 128
BURST = [150, 60, 70, 50, 90, 40]  # prompt lengths; the first is longer than the budget


@pytest.fixture(scope="module")
def budgeted(smollm2_dir, tmp_path_factory) -> TorchLlamaBackend:
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny"), smollm2_dir)
    config = EngineConfig(device="cpu", dtype="float32", max_batch_size=8, max_prefill_tokens=BUDGET)
    backend = load_backend(inspect_folder(folder), config)
    backend.info.eos_token_ids = set()  # random weights: every request runs to its length
    return backend  # type: ignore[return-value]


def serve_burst(backend: TorchLlamaBackend, config: EngineConfig) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """One stream decoding, then the burst. Returns every request's tokens and, per step from the
    burst's arrival, (prompt tokens prefilled, the stream's tokens so far)."""
    engine = LLMEngine(backend, config)
    outputs: list[list[int]] = [[] for _ in range(len(BURST) + 1)]
    prefilled = [0]
    inner = backend.prefill

    def counting(seqs):
        prefilled[-1] += sum(len(s.token_ids) for s in seqs)
        return inner(seqs)

    def sink(out: list[int]):
        return lambda event: out.append(event.id) if isinstance(event, TokenEvent) else None

    backend.prefill = counting  # type: ignore[method-assign]
    try:
        engine.add_request(list(range(1000, 1020)), SamplingParams(max_new_tokens=40), sink(outputs[0]))
        for _ in range(3):
            engine.step()
        for i, length in enumerate(BURST):
            prompt = [100 + (7 * i + k) % 900 for k in range(length)]
            engine.add_request(prompt, SamplingParams(max_new_tokens=8), sink(outputs[i + 1]))
        steps = []
        while engine.has_work():
            prefilled.append(0)
            engine.step()
            steps.append((prefilled[-1], len(outputs[0])))
    finally:
        del backend.prefill
    return outputs, steps


def test_a_burst_joins_over_several_steps_while_a_stream_decodes(budgeted):
    assert budgeted.prefill_tokens == BUDGET  # the budget also bounds each forward
    outputs, steps = serve_burst(budgeted, EngineConfig(max_batch_size=8, max_prefill_tokens=BUDGET))
    prefill_steps = [i for i, (tokens, _) in enumerate(steps) if tokens]
    assert [steps[i][0] for i in prefill_steps] == [150, 60, 120, 90, 40]  # FIFO, the first alone
    assert all(tokens <= max(BUDGET, max(BURST)) for tokens, _ in steps)
    stream = [steps[i][1] for i in prefill_steps]
    assert stream == list(range(stream[0], stream[0] + len(prefill_steps)))  # a token in each of those steps

    whole = TorchLlamaBackend(budgeted.model, budgeted.tokenizer, budgeted.info, budgeted.kv)  # chunk 8192
    unbudgeted, at_once = serve_burst(whole, EngineConfig(max_batch_size=8))
    assert [tokens for tokens, _ in at_once if tokens] == [sum(BURST)]  # the whole burst in one step
    assert outputs == unbudgeted and all(len(out) == 8 for out in outputs[1:]) and len(outputs[0]) == 40
