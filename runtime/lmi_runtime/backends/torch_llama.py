"""The torch backend: the compact Llama-family model (`llama_model.py`) run over the paged KV
cache (`kv_cache.py`), device-agnostic (CPU float32 here; CUDA the same code).

Prefill runs all newly admitted prompts as one padded batch; decode runs one batched step over
every running sequence, each at its own position and masked to its own length. Positions come
from each sequence's token list, so re-running a step rewrites the same cache slots
(idempotent, as the engine's failure isolation requires).
"""

from __future__ import annotations

import torch

from lmi_runtime.backends.base import Backend, ModelInfo
from lmi_runtime.backends.kv_cache import BlockKVCache
from lmi_runtime.backends.llama_model import CacheView, LlamaForCausalLM
from lmi_runtime.engine.request import SamplingParams, Sequence


class TorchLlamaBackend(Backend):
    def __init__(self, model: LlamaForCausalLM, tokenizer, info: ModelInfo, kv: BlockKVCache):
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.kv = kv
        self.device = kv.pool.device

    def max_reservable_tokens(self) -> int:
        return self.kv.capacity_tokens

    def reserve(self, seq: Sequence) -> bool:
        return self.kv.allocate(seq.seq_id, seq.total_tokens)

    def free(self, seq: Sequence) -> None:
        self.kv.free(seq.seq_id)

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        lengths = [len(s.token_ids) for s in seqs]
        width = max(lengths)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : lengths[row]] = torch.tensor(seq.token_ids)
        lens = torch.tensor(lengths)
        positions = torch.arange(width).expand(len(seqs), width)
        real = positions < lens.unsqueeze(1)
        slots = self.kv.slots([s.seq_id for s in seqs], positions)
        view = CacheView(
            write_slots=torch.where(real, slots, 0).to(self.device),
            read_slots=slots.to(self.device),
            mask=self._mask(positions, width),
        )
        return self.model(
            ids.to(self.device), positions.to(self.device), self.kv.pool, view, (lens - 1).to(self.device)
        )

    def score(self, token_ids: list[int]) -> torch.Tensor:
        """All-position logits through a temporary sequence in the KV cache, freed at once."""
        temp = Sequence(token_ids, SamplingParams(), max_new_tokens=0)
        if not self.reserve(temp):
            raise RuntimeError("no KV-cache room to score the prompt now; retry later")
        try:
            positions = torch.arange(len(token_ids)).unsqueeze(0)
            slots = self.kv.slots([temp.seq_id], positions).to(self.device)
            view = CacheView(write_slots=slots, read_slots=slots, mask=self._mask(positions, len(token_ids)))
            every = positions.to(self.device)  # `last` [1, T]: the logits of every position
            ids = torch.tensor([token_ids], device=self.device)
            return self.model(ids, every, self.kv.pool, view, every)[0].float()
        finally:
            self.free(temp)

    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        pos = torch.tensor([len(s.token_ids) - 1 for s in seqs]).unsqueeze(1)  # [B, 1]
        width = int(pos.max()) + 1
        ids = torch.tensor([[s.token_ids[-1]] for s in seqs])
        seq_ids = [s.seq_id for s in seqs]
        view = CacheView(
            write_slots=self.kv.slots(seq_ids, pos).to(self.device),
            read_slots=self.kv.slots(seq_ids, torch.arange(width).expand(len(seqs), width)).to(self.device),
            mask=self._mask(pos, width),
        )
        last = torch.zeros(len(seqs), dtype=torch.long, device=self.device)
        return self.model(ids.to(self.device), pos.to(self.device), self.kv.pool, view, last)

    def _mask(self, positions: torch.Tensor, width: int) -> torch.Tensor:
        """[B, 1, T, L]: a token at position p sees context positions 0..p (causal, per row)."""
        return (torch.arange(width) <= positions.unsqueeze(-1)).unsqueeze(1).to(self.device)
