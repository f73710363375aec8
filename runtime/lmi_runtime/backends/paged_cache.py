"""The paged KV cache's tensors: one pool `[layers, 2, num_blocks * block_size, kv_heads,
head_dim]` per rank, addressed through the engine's block bookkeeping
(`lmi_runtime.engine.kv_cache.BlockKVCacheManager`), which the scheduler claims blocks from."""

from __future__ import annotations

import torch

from lmi_runtime.engine.kv_cache import BlockKVCacheManager


class PagedKVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, blocks: BlockKVCacheManager,
                 dtype: torch.dtype, device: torch.device):
        self.blocks = blocks
        # zeros: the OS hands out pages lazily, so an unused pool costs little on CPU
        self.pool = torch.zeros(
            (num_layers, 2, blocks.num_blocks * blocks.block_size, num_kv_heads, head_dim), dtype=dtype, device=device
        )

    @property
    def block_size(self) -> int:
        return self.blocks.block_size
