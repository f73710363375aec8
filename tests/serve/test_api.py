"""The HTTP surface: the official openai client, bad requests (clear 4xx, nothing stuck),
a client that disconnects mid-stream, a full queue, /ping while loading."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.server.app import create_app
from lmi_runtime.server.loading import start_engine
from lmi_runtime.server.state import ServerState

from .conftest import FlakyBackend, LiveServer, sibling_backend


def test_openai_client_completion_chat_and_streaming(live, backend, reference):
    from openai import OpenAI

    client = OpenAI(base_url=f"{live.url}/v1", api_key="unused")
    [model] = client.models.list().data
    prompt = "The capital of France is"
    done = client.completions.create(model=model.id, prompt=prompt, max_tokens=8, temperature=0)
    assert done.choices[0].text == backend.tokenizer.decode(list(reference(prompt, 8)), skip_special_tokens=True)
    assert done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (len(backend.tokenizer(prompt)["input_ids"]), 8)

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=model.id, messages=messages, max_tokens=20, temperature=0)
    answer = chat.choices[0].message.content
    assert "Paris" in answer and chat.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=model.id, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    streamed = client.completions.create(model=model.id, prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == done.choices[0].text


def test_chat_via_invocations_and_stop(client):
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 20,
            "temperature": 0}
    res = client.post("/invocations", json=body)
    assert res.status_code == 200 and res.json()["object"] == "chat.completion"
    text = res.json()["choices"][0]["message"]["content"]
    word = text.split()[2]
    cut = client.post("/v1/chat/completions", json={**body, "stop": word}).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.index(word)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    raw = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "stream": True})
    assert raw.text.rstrip().endswith("data: [DONE]")
    # LMI's own chat test payload asks for log-probs
    scored = client.post("/invocations", json={**body, "max_tokens": 4, "logprobs": True, "top_logprobs": 3}).json()
    assert [len(c["top_logprobs"]) for c in scored["choices"][0]["logprobs"]["content"]] == [3] * 4
    # what load generators send: ignore_eos and continuous_usage_stats, streamed
    load = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 5, "stream": True, "ignore_eos": True,
                                                 "stream_options": {"include_usage": True,
                                                                    "continuous_usage_stats": True}})
    assert load.headers["x-lmi-ignored-params"] == "stream_options.continuous_usage_stats"
    chunks = [json.loads(line[6:]) for line in load.text.splitlines() if line.startswith("data: {")]
    assert chunks[-1]["usage"]["completion_tokens"] == 5


TOO_LONG = "hello " * 5000

BAD = [
    (b'{"inputs": "hi",', 400, "not valid JSON"),
    (b'["hi"]', 400, "JSON object"),
    ({"inputs": ""}, 400, "'inputs' is empty"),
    ({"inputs": []}, 400, "'inputs' is empty"),
    ({"parameters": {}}, 422, "'inputs' is required"),
    ({"inputs": 5}, 422, "inputs"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": -3}}, 422, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": "ten"}}, 422, "max_new_tokens"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 10**9}}, 400,
     "prompt (1 tokens) + max_new_tokens (1000000000) = 1000000001 tokens exceeds this model's context of 4096"),
    (b'{"inputs": "hi", "parameters": {"temperature": 1e999}}', 422, "finite"),
    (b'{"inputs": "hi", "parameters": {"repetition_penalty": Infinity}}', 400, "Infinity is not a JSON value"),
    ({"inputs": "hi", "parameters": {"repetition_penalty": 1e-300}}, 422, "repetition_penalty"),
    ({"inputs": "hi", "parameters": {"typical_p": 0.5}}, 422, "typical_p"),
    ({"inputs": "hi", "parameters": {"decoder_input_details": True}, "stream": True}, 400, "cannot stream"),
    ({"inputs": "hi", "parameters": {"temperature": -1}}, 422, "temperature"),
    ({"inputs": "hi", "parameters": {"max_new_tokenz": 5}}, 422, "unknown parameter 'parameters.max_new_tokenz'"),
    ({"inputs": "hi", "typo": 1}, 422, "unknown parameter 'typo'"),
    ({"inputs": TOO_LONG}, 413, "at most 4095"),
    ({"prompt": "hi", "n": 0}, 400, "'n'"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "'max_tokens' 0"),
    ({"prompt": "hi", "suffix": "x"}, 400, "'suffix' is not supported"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_requests_get_clear_errors(client, live, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    res = client.post("/invocations", content=content, headers={"Content-Type": "application/json"})
    assert res.status_code == status, res.text
    assert message in res.json()["error"]
    assert live.metric("lmi_running_batch_size") == 0 and live.metric("lmi_queue_depth") == 0


def test_serves_normally_after_bad_requests(client):
    for body, status, _ in BAD:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        assert client.post("/invocations", content=content).status_code == status
    res = client.post("/invocations", json={"inputs": "The capital of France is", "parameters": {"max_new_tokens": 3}})
    assert res.status_code == 200 and res.json()["generated_text"] == " Paris.\n"


def test_disconnected_client_frees_its_slot(live, client):
    cancelled = live.metric("lmi_engine_requests_finished_total", '{reason="cancelled"}', default=0.0)
    with httpx.Client(base_url=live.url, timeout=60) as c:
        with c.stream("POST", "/invocations", json={"inputs": "Once upon a time, in a small village,",
                                                     "parameters": {"max_new_tokens": 2000}, "stream": True}) as res:
            lines = res.iter_lines()  # held: dropping the iterator would already close the connection
            assert json.loads(next(lines))["token"]["id"] >= 0
            assert live.metric("lmi_running_batch_size") == 1
    end = time.monotonic() + 20
    while live.metric("lmi_running_batch_size") != 0:
        assert time.monotonic() < end, "the cancelled request still holds its slot"
        time.sleep(0.1)
    assert live.metric("lmi_engine_requests_finished_total", '{reason="cancelled"}') == cancelled + 1
    res = client.post("/invocations", json={"inputs": "Water boils at", "parameters": {"max_new_tokens": 3}})
    assert res.status_code == 200


def test_queue_full_is_rejected_with_503(backend):
    state = ServerState()
    start_engine(state, sibling_backend(backend, 1), EngineConfig(max_batch_size=1, max_queue=1))
    with LiveServer(state) as server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
                body = {"inputs": "Count slowly:", "parameters": {"max_new_tokens": 25}}
                return await asyncio.gather(*(c.post("/invocations", json=body) for _ in range(5)))

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert 503 in codes and 200 in codes and set(codes) <= {200, 503}, codes
        refused = next(r for r in responses if r.status_code == 503).json()
        assert "MAX_CONCURRENT_REQUESTS" in refused["error"]
        again = httpx.post(f"{server.url}/invocations", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
        assert again.status_code == 200  # idle again: accepted
        assert server.metric("lmi_requests_total", '{path="/invocations",status="503"}') >= 1


def test_ping_is_503_until_loaded(backend):
    state = ServerState()
    with TestClient(create_app(state)) as c:
        assert c.get("/ping").status_code == 503
        res = c.post("/invocations", json={"inputs": "hi"})
        assert res.status_code == 503 and "loading" in res.json()["error"]
        start_engine(state, sibling_backend(backend, 1), EngineConfig(max_batch_size=1))
        try:
            assert c.get("/ping").status_code == 200
            assert c.post("/invocations", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}).status_code == 200
        finally:
            state.engine.shutdown()


def test_failure_mid_stream_ends_with_error_token(backend):
    own = sibling_backend(backend, 2)
    poison = "Water boils at"
    state = ServerState()
    start_engine(state, FlakyBackend(own, own.tokenizer(poison)["input_ids"][-1]), EngineConfig(max_batch_size=2))
    with LiveServer(state) as server:
        body = {"inputs": poison, "parameters": {"max_new_tokens": 10}, "stream": True}
        lines = [json.loads(line) for line in httpx.post(f"{server.url}/invocations", json=body).text.splitlines()]
        assert [line["token"]["id"] >= 0 for line in lines] == [True, True, False]
        assert lines[-1]["details"]["finish_reason"] == "error" and "kernel failure" in lines[-1]["error"]
        assert lines[-1]["generated_text"] == "".join(line["token"]["text"] for line in lines)
        plain = httpx.post(f"{server.url}/invocations", json={"inputs": poison})
        assert plain.status_code == 500 and "kernel failure" in plain.json()["error"]
        fine = httpx.post(f"{server.url}/invocations", json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}})
        assert fine.status_code == 200
    assert own.kv.blocks.free_blocks == own.kv.blocks.num_blocks - 1


def test_lmi_details_prefill_top_tokens_and_samples(client, backend, reference):
    body = {"inputs": "The capital of France is",
            "parameters": {"max_new_tokens": 4, "details": True, "decoder_input_details": True, "top_n_tokens": 2}}
    res = client.post("/invocations", json=body).json()
    details = res["details"]
    assert [t["id"] for t in details["tokens"]] == list(reference(body["inputs"], 4))
    assert [t["id"] for t in details["prefill"]] == backend.tokenizer(body["inputs"])["input_ids"]
    assert details["prefill"][0]["log_prob"] is None
    assert all(top[0]["id"] == t["id"] and len(top) == 2 for top, t in zip(details["top_tokens"], details["tokens"]))
    sampled = {"inputs": "Once upon a time", "parameters": {"max_new_tokens": 6, "temperature": 0.9, "seed": 11,
                                                             "n": 3, "details": True}}
    first = client.post("/invocations", json=sampled).json()
    assert len(first["details"]["best_of_sequences"]) == 2  # temperature without do_sample samples (LMI ≥ 0.32)
    assert client.post("/invocations", json=sampled).json() == first
    forced = {"inputs": "Hi", "parameters": {"max_new_tokens": 12, "ignore_eos_token": True, "details": True}}
    assert client.post("/invocations", json=forced).json()["details"]["generated_tokens"] == 12


def test_streaming_a_list_of_inputs(client):
    inputs = ["The capital of France is", "Water boils at"]
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 4}}
    whole = client.post("/invocations", json=body).json()
    lines = [json.loads(line) for line in client.post("/invocations", json={**body, "stream": True}).text.splitlines()]
    for index, result in enumerate(whole):
        own = [line for line in lines if line["index"] == index]
        assert "".join(line["token"]["text"] for line in own) == result["generated_text"] == own[-1]["generated_text"]


class ForkingBackend:
    """The real backend and its real `fork` (a copy of the parent's prompt blocks), counting
    prefills and forks: the extra samples must not be prefilled through `prefill` and must
    decode as their own prefill would have."""

    def __init__(self, inner):
        self.inner, self.prefilled, self.forked = inner, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, seqs):
        self.prefilled += len(seqs)
        return self.inner.prefill(seqs)

    def fork(self, parent, child):
        self.forked += 1
        return self.inner.fork(parent, child)


def test_samples_of_one_request_share_the_prefill_when_the_backend_can_fork(backend, reference):
    from lmi_runtime.engine.engine import LLMEngine
    from lmi_runtime.engine.request import SamplingParams

    own = ForkingBackend(sibling_backend(backend, 4))
    engine = LLMEngine(own, EngineConfig(max_batch_size=4))
    prompt = "The capital of France is"
    ids = own.tokenizer(prompt)["input_ids"]
    sinks: list[list] = [[], [], []]
    first = engine.add_request(ids, SamplingParams(max_new_tokens=4), sinks[0].append)
    for sink in sinks[1:]:
        engine.add_request(ids, SamplingParams(max_new_tokens=4), sink.append, fork_of=first)
    while engine.has_work():
        engine.step()
    assert (own.prefilled, own.forked) == (1, 2)
    for sink in sinks:
        assert [e.id for e in sink[:-1]] == list(reference(prompt, 4))


class WatchedBackend:
    """The real backend, noting how many events the request had sent when each decode began."""

    def __init__(self, inner, events: list):
        self.inner, self.events, self.sent_at_decode = inner, events, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, seqs, ahead=None):
        self.sent_at_decode.append(len(self.events))
        return self.inner.decode(seqs, ahead) if ahead else self.inner.decode(seqs)


def test_on_the_cpu_a_step_sends_the_tokens_it_made(backend, reference):
    """Nothing runs beside a CPU forward, so holding a step's tokens back to overlap the next
    one (as on a GPU) only delays them: the first token goes out before the decode forward,
    and each decoded token in the step that made it (a step later, time to first token on this
    CPU was 0.19 s against transformers' 0.08)."""
    from lmi_runtime.engine.engine import LLMEngine
    from lmi_runtime.engine.request import SamplingParams, TokenEvent

    events: list = []
    own = WatchedBackend(sibling_backend(backend, 2), events)
    engine = LLMEngine(own, EngineConfig(max_batch_size=2))
    prompt = "The capital of France is"
    engine.add_request(own.tokenizer(prompt)["input_ids"], SamplingParams(max_new_tokens=3), events.append)
    engine.step()
    assert own.sent_at_decode == [1]  # the prefill's token was out before the first decode
    assert [e.id for e in events if isinstance(e, TokenEvent)] == list(reference(prompt, 2))
    while engine.has_work():
        engine.step()
    assert [e.id for e in events if isinstance(e, TokenEvent)] == list(reference(prompt, 3))
