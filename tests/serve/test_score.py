"""`Backend.score` (prompt log-probs): all-position logits equal transformers' within 1e-3, for
the torch backend (through a temporary KV-cache sequence it frees) and the transformers one."""

from __future__ import annotations

import torch

from lmi_runtime.backends.hf_backend import TransformersBackend

TEXT = "The capital of France is Paris, and the capital of Spain is"


def reference_logprobs(hf_model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), -1)


def test_torch_backend_scores_like_transformers_and_frees_its_room(backend, hf_model):
    ids = backend.tokenizer(TEXT)["input_ids"]
    free = backend.kv.blocks.free_blocks
    scored = torch.log_softmax(backend.score(ids), -1)
    assert scored.shape == (len(ids), backend.info.vocab_size)
    assert torch.allclose(scored, reference_logprobs(hf_model, ids), atol=1e-3)
    assert backend.kv.blocks.free_blocks == free


def test_transformers_backend_scores_like_transformers(backend, hf_model):
    fallback = TransformersBackend(hf_model, backend.tokenizer, backend.info, torch.device("cpu"))
    ids = backend.tokenizer(TEXT)["input_ids"]
    assert torch.allclose(torch.log_softmax(fallback.score(ids), -1), reference_logprobs(hf_model, ids), atol=1e-3)
