"""What OpenAI clients send, through the official `openai` SDK against the real model:
log-probs (from the raw logits, equal to transformers'), echo and prompt scoring, token-id
prompts, n/best_of with seeds, penalties and logit_bias, the unknown-field policy and
OpenAI's error shape."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient

from lmi_runtime.server.app import create_app
from lmi_runtime.server.state import ServerState

PROMPT = "The capital of France is"


@pytest.fixture()
def sdk(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def model_logprobs(hf_model, ids: list[int]) -> torch.Tensor:
    """transformers' log-probs of every token of `ids` given the ones before it ([len-1])."""
    with torch.inference_mode():
        logits = hf_model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1))[:, 0]


def test_echo_scores_token_prompts_like_transformers(sdk, backend, hf_model):
    texts = ["Paris is the capital of France.", "The cat sat on the mat and"]
    prompts = [backend.tokenizer(t)["input_ids"] for t in texts]
    done = sdk.completions.create(model="m", prompt=prompts, max_tokens=0, echo=True, logprobs=1, temperature=0)
    assert [c.text for c in done.choices] == [backend.tokenizer.decode(p) for p in prompts]
    for choice, ids in zip(done.choices, prompts):
        lp = choice.logprobs
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.tokens) == len(ids)
        got = torch.tensor(lp.token_logprobs[1:])
        assert torch.allclose(got, model_logprobs(hf_model, ids), atol=1e-3)
        assert lp.text_offset[1] == len(lp.tokens[0]) and choice.finish_reason == "length"
    assert done.usage.completion_tokens == 0 and done.usage.prompt_tokens == sum(map(len, prompts))


def test_generated_logprobs_top_n_and_echo_with_generation(sdk, backend, reference, hf_model):
    done = sdk.completions.create(model="m", prompt=PROMPT, max_tokens=4, logprobs=3, temperature=0)
    lp = done.choices[0].logprobs
    expected = list(reference(PROMPT, 4))
    assert lp.tokens == [backend.tokenizer.decode([t]) for t in expected]
    ids = backend.tokenizer(PROMPT)["input_ids"] + expected
    assert torch.allclose(torch.tensor(lp.token_logprobs), model_logprobs(hf_model, ids)[-4:], atol=1e-3)
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert 3 <= len(top) <= 4 and max(top.values()) == pytest.approx(chosen)  # greedy: the chosen is the top
    # echo + generation: the prompt's tokens then the generated ones, as lm-eval's loglikelihood request
    both = sdk.completions.create(model="m", prompt=PROMPT, max_tokens=1, echo=True, logprobs=1, temperature=0)
    prompt_len = len(backend.tokenizer(PROMPT)["input_ids"])
    assert both.choices[0].text.startswith(PROMPT) and len(both.choices[0].logprobs.tokens) == prompt_len + 1
    chunks = list(sdk.completions.create(model="m", prompt=PROMPT, max_tokens=1, echo=True, logprobs=1,
                                         temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == both.choices[0].text
    streamed = [x for c in chunks if c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    assert streamed[0] is None and streamed[1:] == pytest.approx(both.choices[0].logprobs.token_logprobs[1:])


def test_chat_logprobs_and_streaming_usage(sdk):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = sdk.chat.completions.create(model="m", messages=messages, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert "".join(c.token for c in content).startswith(chat.choices[0].message.content[:3])
    for item in content:
        assert item.bytes == list(item.token.encode()) and len(item.top_logprobs) == 2
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)
    chunks = list(sdk.chat.completions.create(model="m", messages=messages, max_tokens=6, temperature=0, stream=True,
                                              logprobs=True, stream_options={"include_usage": True}))
    streamed = [c for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for c in chunk.choices[0].logprobs.content]
    assert [c.logprob for c in streamed] == pytest.approx([c.logprob for c in content])
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_n_samples_with_a_seed_are_different_and_reproducible(sdk):
    ask = dict(model="m", prompt="Once upon a time", max_tokens=12, temperature=1.0, n=4, seed=1234)
    first = [c.text for c in sdk.completions.create(**ask).choices]
    assert len(set(first)) == 4
    assert [c.text for c in sdk.completions.create(**ask).choices] == first
    other = [c.text for c in sdk.completions.create(**{**ask, "seed": 99}).choices]
    assert other != first
    best = sdk.completions.create(model="m", prompt="Once upon a time", max_tokens=6, temperature=1.0, n=2,
                                  best_of=4, seed=5, logprobs=0)
    sums = [sum(c.logprobs.token_logprobs) for c in best.choices]
    assert len(best.choices) == 2 and sums == sorted(sums, reverse=True)
    chat = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "Say a word."}],
                                       max_tokens=8, temperature=1.0, n=3, seed=7)
    assert [c.index for c in chat.choices] == [0, 1, 2]


def test_penalties_bias_and_ignore_eos(sdk, backend):
    comma = backend.tokenizer(",")["input_ids"][0]
    forced = sdk.completions.create(model="m", prompt=PROMPT, max_tokens=3, temperature=0,
                                    logit_bias={str(comma): 100})
    assert forced.choices[0].text == ",,,"
    plain = sdk.completions.create(model="m", prompt="one one one one", max_tokens=8, temperature=0)
    penalized = sdk.completions.create(model="m", prompt="one one one one", max_tokens=8, temperature=0,
                                       frequency_penalty=2.0, presence_penalty=2.0)
    # greedy repeats itself ("-to-many-to-many"); penalties on the generated tokens break the loop
    assert penalized.choices[0].text.count("many") < plain.choices[0].text.count("many")
    eos = backend.info.eos_token_ids
    long = sdk.completions.create(model="m", prompt=PROMPT, max_tokens=40, temperature=0,
                                  logit_bias={str(next(iter(eos))): 100}, extra_body={"ignore_eos": True})
    assert long.usage.completion_tokens == 40 and long.choices[0].finish_reason == "length"


def test_unknown_fields_are_ignored_and_listed_unsupported_ones_refused(sdk, live):
    raw = sdk.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, store=True,
        metadata={"who": "test"}, user="u1", stream_options=None,
        extra_body={"stream_options": {"include_usage": False, "continuous_usage_stats": True}, "mystery": 1})
    ignored = raw.headers["x-lmi-ignored-params"].split(", ")
    assert {"store", "metadata", "user", "mystery"} <= set(ignored)
    assert raw.parse().choices[0].message.content is not None
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                    tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert "'tools' is not supported" in str(err.value) and err.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}],
                                    response_format={"type": "json_object"})
    assert "response_format" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.completions.create(model="m", prompt="x", suffix="y")
    assert "suffix" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.completions.create(model="m", prompt="x", temperature=5)
    assert err.value.body["param"] == "temperature"
    res = httpx.post(f"{live.url}/v1/completions", json={"prompt": "x", "seed": 2**70 + 3, "max_tokens": 2,
                                                         "temperature": 1.0})
    assert res.status_code == 200  # seeds are taken modulo 2^64
    assert res.json()["choices"][0]["text"] == httpx.post(f"{live.url}/v1/completions", json={
        "prompt": "x", "seed": 3, "max_tokens": 2, "temperature": 1.0}).json()["choices"][0]["text"]


def test_strict_params_refuses_unknown_fields(live):
    shared = live.state
    state = ServerState(engine=shared.engine, info=shared.info, tokenizer=shared.tokenizer, strict_params=True)
    with TestClient(create_app(state)) as c:
        res = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "store": True})
        assert res.status_code == 400 and res.json()["error"]["param"] == "store"
        assert "--strict-params" in res.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_health_routes(client):
    for path in ("/health", "/v1/health", "/ping"):
        assert client.get(path).json()["status"] == "healthy"
