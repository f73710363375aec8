"""KV-cache room as the scheduler sees it: a sequence claims room before it joins the running
batch and gives it back when it leaves (as vLLM v1's scheduler owns its `KVCacheManager`).

`BlockKVCacheManager` is the paged cache's bookkeeping: fixed-size blocks and each sequence's
block table, addressed by flat slot (block * block_size + offset) as in vLLM's paged
attention. Block 0 is a scratch block that is never handed out: padding rows of a CUDA-graph
batch write there. Block tables stay on the host (plain lists): the backend builds each
step's device tensors from them in one copy, over a pool tensor it owns
(`lmi_runtime.backends.paged_cache`). A sequence reserves all the blocks its prompt +
max_new_tokens can fill when it is admitted, so a running sequence never runs out of room and
no preemption is needed (simple, at the price of reserving for outputs that may stop early).
Backends whose library schedules its own cache (TensorRT-LLM, Neuron, transformers' dynamic
caches) answer the same three calls with their own rule.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

from lmi_runtime.engine.request import Sequence


class KVCacheManager(ABC):
    """Claims and releases cache room for whole sequences."""

    @abstractmethod
    def max_reservable_tokens(self) -> int:
        """The most tokens one sequence can ever hold here (for rejecting requests up front)."""

    @abstractmethod
    def reserve(self, seq: Sequence) -> bool:
        """Claim room for `seq.total_tokens`; False when not available right now."""

    @abstractmethod
    def free(self, seq: Sequence) -> None:
        """Release everything held for `seq` (safe to call twice)."""


class BlockKVCacheManager(KVCacheManager):
    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, 0, -1))  # block 0 is the scratch block
        self._tables: dict[int, list[int]] = {}

    @property
    def capacity_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def max_reservable_tokens(self) -> int:
        return self.capacity_tokens

    def reserve(self, seq: Sequence) -> bool:
        return self.allocate(seq.seq_id, seq.total_tokens)

    def free(self, seq: Sequence) -> None:
        self.release(seq.seq_id)

    def allocate(self, seq_id: int, num_tokens: int) -> bool:
        """Blocks for `num_tokens` under `seq_id` (also for ids that are no sequence, e.g. a
        scratch prompt being scored); True when already held."""
        if seq_id in self._tables:
            return True
        need = math.ceil(num_tokens / self.block_size)
        if need > len(self._free):
            return False
        self._tables[seq_id] = [self._free.pop() for _ in range(need)]
        return True

    def release(self, seq_id: int) -> None:
        table = self._tables.pop(seq_id, None)
        if table is not None:
            self._free.extend(table)

    def table(self, seq_id: int) -> list[int]:
        return self._tables[seq_id]

    def slot(self, seq_id: int, position: int) -> int:
        table = self._tables[seq_id]
        return table[position // self.block_size] * self.block_size + position % self.block_size
