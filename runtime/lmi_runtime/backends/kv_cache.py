"""The KV-cache manager: a pool of fixed-size blocks and each sequence's block table.

The pool is one tensor `[layers, 2, num_blocks * block_size, kv_heads, head_dim]`, addressed
by flat slot (block * block_size + offset), as in vLLM's paged attention. Block 0 is a
scratch block that is never handed out: padding rows of a CUDA-graph batch write there.
Block tables stay on the host (plain lists): the backend builds each step's device tensors
from them in one copy. A sequence reserves all
the blocks its prompt + max_new_tokens can fill when it is admitted, so a running sequence
never runs out of room and no preemption is needed (simple, at the price of reserving for
outputs that may stop early).
"""

from __future__ import annotations

import math

import torch


class BlockKVCache:
    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.block_size = block_size
        self.num_blocks = num_blocks
        # zeros: the OS hands out pages lazily, so an unused pool costs little on CPU
        self.pool = torch.zeros(
            (num_layers, 2, num_blocks * block_size, num_kv_heads, head_dim), dtype=dtype, device=device
        )
        self._free = list(range(num_blocks - 1, 0, -1))  # block 0 is the scratch block
        self._tables: dict[int, list[int]] = {}

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.finfo(dtype).bits // 8

    @property
    def capacity_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def allocate(self, seq_id: int, num_tokens: int) -> bool:
        if seq_id in self._tables:
            return True
        need = math.ceil(num_tokens / self.block_size)
        if need > len(self._free):
            return False
        self._tables[seq_id] = [self._free.pop() for _ in range(need)]
        return True

    def free(self, seq_id: int) -> None:
        table = self._tables.pop(seq_id, None)
        if table is not None:
            self._free.extend(table)

    def table(self, seq_id: int) -> list[int]:
        return self._tables[seq_id]

    def slot(self, seq_id: int, position: int) -> int:
        table = self._tables[seq_id]
        return table[position // self.block_size] * self.block_size + position % self.block_size
