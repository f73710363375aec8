"""Fallback backend for architectures the compact model does not cover: transformers' own
implementation with one `DynamicCache` per sequence. Prefill and decode loop over the
sequences one at a time (no batched step, no shared cache pool): correct for any causal LM
transformers knows, not fast. Continuous batching still applies at the engine level.
"""

from __future__ import annotations

import torch

from lmi_runtime.engine.backend import Backend, ServedModel
from lmi_runtime.engine.kv_cache import KVCacheManager
from lmi_runtime.engine.request import Sequence


class DynamicCaches(KVCacheManager):
    """One transformers cache per sequence, grown on demand: the engine's batch size bounds memory."""

    def __init__(self, max_model_len: int):
        self.max_model_len = max_model_len
        self.caches: dict[int, object] = {}

    def max_reservable_tokens(self) -> int:
        return self.max_model_len

    def reserve(self, seq: Sequence) -> bool:
        return True

    def free(self, seq: Sequence) -> None:
        self.caches.pop(seq.seq_id, None)


class TransformersBackend(Backend):
    def __init__(self, model, tokenizer, info: ServedModel, device: torch.device):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.kv_manager: DynamicCaches = DynamicCaches(info.max_model_len)

    @torch.inference_mode()
    def _forward(self, ids: list[int], cache) -> tuple[torch.Tensor, object]:
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device), past_key_values=cache, use_cache=True
        )
        return out.logits[0, -1], out.past_key_values

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        rows = []
        for seq in seqs:
            logits, self.kv_manager.caches[seq.seq_id] = self._forward(seq.token_ids, None)
            rows.append(logits)
        return torch.stack(rows)

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        rows = []
        for seq in seqs:
            cache = self.kv_manager.caches[seq.seq_id]
            cached = len(seq.token_ids) - 1
            if cache.get_seq_length() > cached:  # a re-run after a failed batch
                cache.crop(cached)
            logits, self.kv_manager.caches[seq.seq_id] = self._forward(seq.token_ids[-1:], cache)
            rows.append(logits)
        return torch.stack(rows)

    @torch.inference_mode()
    def score(self, token_ids: list[int]) -> torch.Tensor:
        return self.model(input_ids=torch.tensor([token_ids], device=self.device), use_cache=False).logits[0].float()
