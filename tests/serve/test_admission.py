"""Requests that could never finish, one request's failure, clients that leave, huge prompts:
each reproduced against the real model, and nothing left holding a slot afterwards."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import httpx
import pytest
import torch

from lmi_runtime.backends.torch_llama import TorchLlamaBackend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.server.loading import start_engine
from lmi_runtime.server.state import ServerState

from .conftest import LiveServer, sibling_backend

CONTEXT = 48


def small_context(backend) -> TorchLlamaBackend:
    own = sibling_backend(backend, 2)
    return TorchLlamaBackend(own.model, own.tokenizer, dataclasses.replace(own.info, max_model_len=CONTEXT), own.kv)


def wait_idle(server: LiveServer, seconds: float = 10) -> None:
    end = time.monotonic() + seconds
    while server.metric("lmi_running_batch_size") != 0 or server.metric("lmi_queue_depth") != 0:
        assert time.monotonic() < end, "a request still holds its slot"
        time.sleep(0.1)


def test_prompt_plus_max_new_tokens_must_fit_the_context(backend):
    state = ServerState()
    start_engine(state, small_context(backend), EngineConfig(max_batch_size=2, max_new_tokens=30))
    prompt = "one two three four five six seven eight nine ten " * 4
    n = len(backend.tokenizer(prompt)["input_ids"])
    assert 30 < n < CONTEXT - 1
    with LiveServer(state) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        lmi = c.post("/invocations", json={"inputs": prompt, "parameters": {"max_new_tokens": 20}})
        assert lmi.status_code == 400
        assert lmi.json()["error"] == (f"prompt ({n} tokens) + max_new_tokens (20) = {n + 20} tokens exceeds this "
                                       f"model's context of {CONTEXT} tokens") and lmi.json()["code"] == 400
        assert f"at most {CONTEXT - n} new tokens" in lmi.json()["hint"]
        # OpenAI without max_tokens: the server default (30) is clamped to what fits, ends by "length"
        clamped = c.post("/v1/completions", json={"prompt": prompt, "temperature": 0, "ignore_eos": True}).json()
        assert clamped["usage"]["completion_tokens"] == CONTEXT - n
        assert clamped["choices"][0]["finish_reason"] == "length"
        explicit = c.post("/v1/completions", json={"prompt": prompt, "max_tokens": 20})
        assert explicit.status_code == 400 and "exceeds this model's context" in explicit.json()["error"]["message"]
        wait_idle(server)


class NaNBackend:
    """The real backend, but the poisoned sequence's logits turn to NaN after two tokens: its
    sampling raises inside a batch of healthy requests (as `repetition_penalty: 1e-300` did
    before parameters were range-checked)."""

    def __init__(self, inner, poison: int):
        self.inner, self.poison = inner, poison

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, seqs, ahead=None):
        ahead = ahead or {}  # a token sampled ahead counts as generated
        logits = self.inner.decode(seqs, ahead).clone()
        for row, seq in enumerate(seqs):
            if seq.prompt_ids[-1] == self.poison and len(seq.output_ids) + (seq.seq_id in ahead) >= 2:
                logits[row] = torch.nan
        return logits


def test_a_sampling_failure_fails_only_its_own_request(backend):
    own = sibling_backend(backend, 5)
    poison = "Water boils at"
    state = ServerState()
    start_engine(state, NaNBackend(own, own.tokenizer(poison)["input_ids"][-1]), EngineConfig(max_batch_size=5))
    others = ["The capital of France is", "Once upon a time", "My favourite colour is", "The sun rises in the"]

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            def ask(text: str):
                return c.post("/invocations", json={"inputs": text, "parameters": {
                    "max_new_tokens": 8, "do_sample": True, "seed": 1, "ignore_eos_token": True}})
            return await asyncio.gather(*(ask(t) for t in [poison, *others]))

    with LiveServer(state) as server:
        bad, *good = asyncio.run(burst(server.url))
        assert bad.status_code == 500 and "non-finite" in bad.json()["error"]
        assert [r.status_code for r in good] == [200] * 4
        wait_idle(server)
        assert server.metric("lmi_decode_batch_size_count") > 0
    assert own.kv.blocks.free_blocks == own.kv.blocks.num_blocks - 1


def test_a_non_streaming_client_that_leaves_frees_its_slot(live):
    cancelled = live.metric("lmi_engine_requests_finished_total", '{reason="cancelled"}', default=0.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{live.url}/invocations", timeout=1.5,
                   json={"inputs": "Once upon a time", "parameters": {"max_new_tokens": 3000, "ignore_eos_token": True}})
    wait_idle(live, 10)
    assert live.metric("lmi_engine_requests_finished_total", '{reason="cancelled"}') == cancelled + 1
    assert live.metric("lmi_requests_total", '{path="/invocations",status="499"}') >= 1


def test_a_huge_prompt_does_not_stall_the_server(live):
    """Tokenizing 4.8 MB (under the 6 MB body limit) takes seconds; it runs in a worker thread, so /ping and a small request
    are answered while it is still being tokenized."""
    done: dict[str, float] = {}

    def big() -> None:
        res = httpx.post(f"{live.url}/invocations", json={"inputs": "hello world " * 400_000}, timeout=120)
        done["big"] = time.monotonic()
        done["status"] = res.status_code

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(1.0)  # the body is uploaded and tokenizing
    assert httpx.get(f"{live.url}/ping", timeout=30).status_code == 200
    small = httpx.post(f"{live.url}/invocations", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, timeout=30)
    answered = time.monotonic()
    thread.join()
    assert small.status_code == 200 and done["status"] == 413
    assert answered < done["big"], "the small request waited for the huge prompt's tokenization"


def test_a_client_leaving_during_the_body_read_is_a_499(live, caplog):
    import socket

    before = live.metric("lmi_requests_total", '{path="/invocations",status="499"}', default=0.0)
    with socket.create_connection(("127.0.0.1", live.port)) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"inputs\": \"hel")
        time.sleep(0.3)
    end = time.monotonic() + 10
    while live.metric("lmi_requests_total", '{path="/invocations",status="499"}', default=0.0) == before:
        assert time.monotonic() < end, "the abandoned request was not counted as 499"
        time.sleep(0.1)
    assert not [r for r in caplog.records if r.levelname == "ERROR" and "unexpected" in r.getMessage()]
