"""`Backend.score` (prompt log-probs): all-position logits equal transformers' within 1e-3, for
the torch backend (through a temporary KV-cache sequence it frees) and the transformers one.
The start's warm-up prefill uses the same scratch sequence."""

from __future__ import annotations

import torch

from lmi_runtime.backends.hf_backend import TransformersBackend
from lmi_runtime.backends.paged_cache import PagedKVCache
from lmi_runtime.backends.torch_llama import TorchLlamaBackend
from lmi_runtime.engine.kv_cache import BlockKVCacheManager

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


def test_warm_prefill_runs_each_power_of_two_and_frees_its_room(backend):
    free = backend.kv.blocks.free_blocks
    assert backend.warm_prefill(128) == [2, 4, 8, 16, 32, 64, 128]
    assert backend.kv.blocks.free_blocks == free


def test_warm_prefill_stays_within_the_chunk_and_the_cache(backend):
    args, block = backend.model.args, backend.kv.block_size
    two_blocks = PagedKVCache(args.num_layers, args.num_kv_heads, args.head_dim, BlockKVCacheManager(3, block),
                              backend.kv.pool.dtype, backend.kv.pool.device)  # block 0 is the scratch block
    small = TorchLlamaBackend(backend.model, backend.tokenizer, backend.info, two_blocks, prefill_tokens=1024)
    assert small.warm_prefill(128) == [s for s in (2, 4, 8, 16, 32, 64) if s <= 2 * block]
    assert small.kv.blocks.free_blocks == 2
    chunked = TorchLlamaBackend(backend.model, backend.tokenizer, backend.info, backend.kv, prefill_tokens=16)
    assert chunked.warm_prefill(128) == [2, 4, 8, 16]
