"""The TokenEngine (the engine for backends that sample by themselves: TensorRT-LLM, Neuron)
with a scripted backend standing in for the vendor library: our stop sequences, EOS/length
finish reasons, the backend's own end and cancellation all behave as with the torch engine."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from lmi_runtime.engine.backend import ServedModel
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.request import FinishEvent, FinishReason, SamplingParams, Sequence, TokenEvent
from lmi_runtime.engine.token_engine import TokenBackend, TokenEngine, TokenStep


class ScriptedBackend(TokenBackend):
    """Emits a fixed token sequence per request, one token per poll; `end_after` ends it early
    the way TensorRT-LLM does at its end token (done without a token)."""

    def __init__(self, tokenizer, script: list[int], end_after: int | None = None):
        self.tokenizer, self.script, self.end_after = tokenizer, script, end_after
        self.info = ServedModel("scripted", 256, {tokenizer.eos_token_id}, len(tokenizer))
        self.started: list[int] = []
        self.freed: list[int] = []

    def max_reservable_tokens(self) -> int:
        return 256

    def reserve(self, seq: Sequence) -> bool:
        return True

    def start(self, seqs: list[Sequence]) -> None:
        self.started += [s.seq_id for s in seqs]

    def poll(self, running: list[Sequence]) -> list[TokenStep]:
        steps = []
        for seq in running:
            n = len(seq.output_ids)
            if self.end_after is not None and n == self.end_after:
                steps.append(TokenStep(seq, None, 0.0, True))
            else:
                steps.append(TokenStep(seq, self.script[n % len(self.script)], -0.5, False))
        return steps

    def free(self, seq: Sequence) -> None:
        self.freed.append(seq.seq_id)


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def run(engine: TokenEngine, prompt: list[int], params: SamplingParams) -> tuple[list, Sequence]:
    """Step until the request finishes; its events (the last one a FinishEvent) and sequence."""
    events: list = []
    seq = engine.add_request(prompt, params, events.append)
    for _ in range(100):
        if events and isinstance(events[-1], FinishEvent):
            break
        engine.step()
    return events, seq


def test_stop_sequence_is_ours_and_frees_the_backend(tokenizer):
    script = tokenizer.encode(" red, green, blue, yellow", add_special_tokens=False)
    backend = ScriptedBackend(tokenizer, script)
    engine = TokenEngine(backend, EngineConfig(max_batch_size=2))
    events, seq = run(engine, tokenizer.encode("Colours:"), SamplingParams(max_new_tokens=50, stop=[", blue"]))
    finish = events[-1]
    assert finish.reason == FinishReason.STOP and finish.text == " red, green"
    assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == " red, green"
    assert backend.started == [seq.seq_id] and backend.freed == [seq.seq_id]


def test_length_and_backend_end(tokenizer):
    script = tokenizer.encode(" one two three four five six", add_special_tokens=False)
    engine = TokenEngine(ScriptedBackend(tokenizer, script), EngineConfig())
    events, _ = run(engine, tokenizer.encode("Count:"), SamplingParams(max_new_tokens=3))
    assert events[-1].reason == FinishReason.LENGTH and events[-1].generated_tokens == 3
    engine = TokenEngine(ScriptedBackend(tokenizer, script, end_after=2), EngineConfig())
    events, _ = run(engine, tokenizer.encode("Count:"), SamplingParams(max_new_tokens=10))
    assert events[-1].reason == FinishReason.EOS and events[-1].text == tokenizer.decode(script[:2])


def test_abort_frees_the_backend_slot(tokenizer):
    backend = ScriptedBackend(tokenizer, tokenizer.encode(" a b c", add_special_tokens=False))
    engine = TokenEngine(backend, EngineConfig())
    events: list = []
    seq = engine.add_request(tokenizer.encode("x"), SamplingParams(max_new_tokens=20), events.append)
    engine.step()
    engine.abort(seq.seq_id)
    engine.step()
    assert events[-1].reason == FinishReason.CANCELLED and backend.freed == [seq.seq_id]


def test_the_library_bounds_its_own_prompts(tokenizer):
    """No prompt budget on a vendor engine, even when the deployment sets one, and the start-up
    line says whose bound applies."""
    from lmi_runtime.engine.engine import AsyncEngine
    from lmi_runtime.server.loading import _prompt_budget

    engine = TokenEngine(ScriptedBackend(tokenizer, [1]), EngineConfig(max_prefill_tokens=512))
    assert engine.prompt_budget is None
    assert _prompt_budget(AsyncEngine(engine)) == "the engine library's"
