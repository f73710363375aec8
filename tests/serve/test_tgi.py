"""TGI compatibility through huggingface_hub's InferenceClient against the real model: the
TGI routes (`/`, `/generate`, `/generate_stream`), `OPTION_TGI_COMPAT` on /invocations, and
chat through the same client."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError

from lmi_runtime.config.engine_settings import tgi_compat
from lmi_runtime.server.app import create_app
from lmi_runtime.server.state import ServerState

PROMPT = "The capital of France is"


@pytest.fixture()
def hf(live) -> InferenceClient:
    return InferenceClient(base_url=live.url)


def test_text_generation_details_prefill_and_top_tokens(hf, backend, reference):
    expected = backend.tokenizer.decode(list(reference(PROMPT, 5)), skip_special_tokens=True)
    assert hf.text_generation(PROMPT, max_new_tokens=5) == expected
    out = hf.text_generation(PROMPT, max_new_tokens=5, details=True, decoder_input_details=True, top_n_tokens=2)
    assert out.generated_text == expected
    d = out.details
    assert d.finish_reason == "length" and d.generated_tokens == 5
    assert [t.id for t in d.tokens] == list(reference(PROMPT, 5))
    prompt_ids = backend.tokenizer(PROMPT)["input_ids"]
    assert [t.id for t in d.prefill] == prompt_ids and d.prefill[0].logprob is None
    assert all(t.logprob < 0 for t in d.prefill[1:])
    # (huggingface_hub leaves nested lists as dicts)
    assert all(len(top) == 2 and top[0]["id"] == tok.id for top, tok in zip(d.top_tokens, d.tokens))


def test_text_generation_stream_with_and_without_details(hf):
    whole = hf.text_generation(PROMPT, max_new_tokens=6)
    assert "".join(hf.text_generation(PROMPT, max_new_tokens=6, stream=True)) == whole
    events = list(hf.text_generation(PROMPT, max_new_tokens=6, stream=True, details=True))
    assert [e.index for e in events] == list(range(6))
    assert all(e.token.logprob < 0 and e.token.special is False for e in events)
    last = events[-1]
    assert last.generated_text == whole and last.details.finish_reason == "length"
    assert last.details.generated_tokens == 6 and all(e.details is None for e in events[:-1])


def test_best_of_and_errors(hf):
    out = hf.text_generation("Once upon a time", max_new_tokens=5, details=True, best_of=3, do_sample=True, seed=3)
    assert len(out.details.best_of_sequences) == 2
    with pytest.raises(ValidationError) as err:  # TGI error_type "validation", parsed by the client
        hf.text_generation(PROMPT, max_new_tokens=10**6)
    assert "exceeds this model's context" in str(err.value)


def test_chat_completion_through_inference_client(live):
    chat = InferenceClient(base_url=f"{live.url}/v1").chat_completion(
        [{"role": "user", "content": "What is the capital of France?"}], max_tokens=12, temperature=0)
    assert "Paris" in chat.choices[0].message.content


def test_tgi_compat_mode_on_invocations(live):
    shared = live.state
    state = ServerState(engine=shared.engine, info=shared.info, tokenizer=shared.tokenizer, tgi_compat=True)
    with TestClient(create_app(state)) as c:
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 3, "details": True}}
        res = c.post("/invocations", json=body).json()
        assert isinstance(res, list) and res[0]["generated_text"] == " Paris.\n"
        assert res[0]["details"]["tokens"][0]["logprob"] < 0
        lines = [line for line in c.post("/invocations", json={**body, "stream": True}).text.splitlines() if line]
        events = [json.loads(line[len("data:"):]) for line in lines]
        assert all(line.startswith("data:") for line in lines)
        assert "".join(e["token"]["text"] for e in events) == " Paris.\n" == events[-1]["generated_text"]
        generate = c.post("/generate", json=body).json()
        assert generate["generated_text"] == " Paris.\n" and generate["details"]["prefill"] == []
        asked = c.post("/generate", json=body, headers={"Accept": "text/event-stream"}).text
        assert asked.startswith("data:") and json.loads(asked.strip().splitlines()[-1][5:])["details"]
        bad = c.post("/invocations", json={"inputs": PROMPT, "parameters": {"nope": 1}})
        assert bad.status_code == 422 and bad.json()["error_type"] == "validation"


def test_tgi_compat_option_from_the_environment_or_serving_properties(tmp_path):
    assert tgi_compat(env={"OPTION_TGI_COMPAT": "true"}) is True
    assert tgi_compat(env={}) is False
    (tmp_path / "serving.properties").write_text("option.tgi_compat=true\n")
    assert tgi_compat(env={}, model_dir=tmp_path) is True
