"""lm-evaluation-harness's `local-completions` model against lmi-serve with its default request
format (token-id prompts, `echo` + `logprobs` + `max_tokens: 1` for log-likelihoods): a tiny
local multiple-choice task and a generate_until task, from a temp task YAML and jsonl files.
The log-likelihoods equal the model's own (transformers) within 1e-3."""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval  # the [dev] extra
import pytest
import torch

MC = [
    {"question": "The capital of France is", "choices": [" Paris", " Berlin", " Rome"], "answer": 0},
    {"question": "Water freezes at zero degrees", "choices": [" Celsius", " Fahrenheit"], "answer": 0},
    {"question": "The opposite of hot is", "choices": [" cold", " warm"], "answer": 0},
]
GEN = [
    {"question": "The capital of France is", "answer": " Paris."},
    {"question": "Question: What is 2 + 2?\nAnswer:", "answer": " 4"},
]

TASKS = """
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
---
task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {gen}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


def write_tasks(folder: Path) -> None:
    for name, rows in (("mc", MC), ("gen", GEN)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mc_yaml, gen_yaml = TASKS.format(mc=folder / "mc.jsonl", gen=folder / "gen.jsonl").split("---\n")
    (folder / "tiny_mc.yaml").write_text(mc_yaml)
    (folder / "tiny_gen.yaml").write_text(gen_yaml)


def test_lm_eval_local_completions(live, smollm2_dir, hf_model, backend, reference, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))  # never the user's cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_tasks(tmp_path)
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"model": "smollm2", "base_url": f"{live.url}/v1/completions", "tokenizer": str(smollm2_dir),
                    "tokenizer_backend": "huggingface", "tokenized_requests": True, "num_concurrent": 1,
                    "max_retries": 1},
        tasks=["tiny_mc", "tiny_gen"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        log_samples=True,
    )
    tok = backend.tokenizer
    for sample in results["samples"]["tiny_mc"]:
        doc = sample["doc"]
        context = tok(doc["question"])["input_ids"]
        for choice, ((loglikelihood, _),) in zip(doc["choices"], sample["resps"]):
            whole = tok(doc["question"] + choice)["input_ids"]
            with torch.inference_mode():
                logprobs = torch.log_softmax(hf_model(torch.tensor([whole])).logits[0].float(), -1)
            expected = sum(logprobs[i - 1, whole[i]].item() for i in range(len(context), len(whole)))
            assert loglikelihood == pytest.approx(expected, abs=1e-3)
    assert results["results"]["tiny_mc"]["acc,none"] == 1.0
    for sample in results["samples"]["tiny_gen"]:
        prompt = sample["doc"]["question"]
        greedy = tok.decode(list(reference(prompt, 8)), skip_special_tokens=True).split("\n")[0]
        assert sample["resps"] == [[greedy]]
