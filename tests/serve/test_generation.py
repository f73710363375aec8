"""Generation over HTTP on the real model: greedy equals transformers, continuous batching
keeps 64 concurrent requests apart, streaming concatenates to the full text, stop sequences,
seeded sampling."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "Water boils at",
    "My favourite colour is",
]


def invoke(client: httpx.Client, inputs, **parameters) -> httpx.Response:
    return client.post("/invocations", json={"inputs": inputs, "parameters": parameters})


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers_generate(client, reference, prompt):
    res = invoke(client, prompt, max_new_tokens=16, details=True)
    assert res.status_code == 200, res.text
    body = res.json()
    ids = [t["id"] for t in body["details"]["tokens"]]
    assert tuple(ids) == reference(prompt, 16)
    assert body["details"]["generated_tokens"] == len(ids)
    assert body["generated_text"] == "".join(t["text"] for t in body["details"]["tokens"])


def test_list_inputs_and_return_full_text(client, reference, backend):
    res = invoke(client, PROMPTS[:3], max_new_tokens=5, return_full_text=True)
    assert res.status_code == 200, res.text
    results = res.json()
    assert len(results) == 3
    for prompt, result in zip(PROMPTS, results):
        expected = backend.tokenizer.decode(list(reference(prompt, 5)), skip_special_tokens=True)
        assert result["generated_text"] == prompt + expected


def test_64_concurrent_requests_with_batch_8(live, reference, backend):
    prompts = [f"Item {i}: the number {i * 7} plus {i} equals" for i in range(64)]
    expected = [backend.tokenizer.decode(list(ids), skip_special_tokens=True) for ids in reference.many(prompts, 6)]
    steps_before = live.metric("lmi_decode_batch_size_count")
    single_before = live.metric("lmi_decode_batch_size_bucket", '{le="1"}')

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.url, timeout=300) as c:
            return await asyncio.gather(*(
                c.post("/invocations", json={"inputs": p, "parameters": {"max_new_tokens": 6}}) for p in prompts
            ))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 64
    assert [r.json()["generated_text"] for r in responses] == expected
    steps = live.metric("lmi_decode_batch_size_count") - steps_before
    single = live.metric("lmi_decode_batch_size_bucket", '{le="1"}') - single_before
    assert steps > 0 and single < steps  # decode steps ran with more than one sequence
    assert live.metric("lmi_running_batch_size") == 0 and live.metric("lmi_queue_depth") == 0


def _jsonlines(res: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in res.text.splitlines() if line.strip()]


def _sse(res: httpx.Response) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in res.text.splitlines() if line.startswith("data: ")]


def test_streaming_jsonlines_and_sse_match_non_streamed(client):
    payload = {"inputs": PROMPTS[2], "parameters": {"max_new_tokens": 12}}
    full = client.post("/invocations", json=payload).json()["generated_text"]
    lines = _jsonlines(client.post("/invocations", json={**payload, "stream": True}))
    events = _sse(client.post("/invocations", json={**payload, "stream": True},
                              headers={"Accept": "text/event-stream"}))
    for stream in (lines, events):
        assert len(stream) == 12
        assert "".join(e["token"]["text"] for e in stream) == full
        assert stream[-1]["generated_text"] == full
        assert stream[-1]["details"]["finish_reason"] == "length"
        assert all("generated_text" not in e for e in stream[:-1])


def test_streaming_holds_back_partial_utf8(client):
    res = client.post("/invocations", json={"inputs": "Say hi in Japanese:", "parameters": {"max_new_tokens": 11},
                                            "stream": True})
    tokens = [line["token"] for line in _jsonlines(res)]
    text = "".join(t["text"] for t in tokens)
    assert any(ord(ch) > 0x3000 for ch in text), text  # the model answers in Japanese
    assert "\ufffd" not in text
    assert any(t["text"] == "" for t in tokens)  # bytes held back until the character completed


def test_stop_sequences(client, backend, reference):
    greedy = backend.tokenizer.decode(list(reference(PROMPTS[0], 16)), skip_special_tokens=True)
    assert greedy.startswith(" Paris.\n\nThe answer")
    res = invoke(client, PROMPTS[0], max_new_tokens=16, stop=["\n\nThe", "zebra"], details=True).json()
    assert res["generated_text"] == " Paris."
    assert res["details"]["finish_reason"] == "stop_sequence"
    lines = _jsonlines(client.post("/invocations", json={
        "inputs": PROMPTS[0], "parameters": {"max_new_tokens": 16, "stop_sequences": ["answer"]}, "stream": True}))
    assert "".join(line["token"]["text"] for line in lines) == " Paris.\n\nThe "
    assert lines[-1]["details"]["finish_reason"] == "stop_sequence"


def test_seeded_sampling_is_reproducible(client, reference, backend):
    params = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.2, "top_p": 0.95}
    first = invoke(client, PROMPTS[3], seed=1234, **params).json()["generated_text"]
    again = invoke(client, PROMPTS[3], seed=1234, **params).json()["generated_text"]
    others = {invoke(client, PROMPTS[3], seed=s, **params).json()["generated_text"] for s in (1, 2, 3)}
    assert first == again
    assert len(others | {first}) > 1
    top1 = invoke(client, PROMPTS[3], max_new_tokens=8, do_sample=True, top_k=1, seed=5).json()["generated_text"]
    assert top1 == backend.tokenizer.decode(list(reference(PROMPTS[3], 8)), skip_special_tokens=True)
