"""The paged KV cache's tensors: one pool `[layers, 2, num_blocks * block_size, kv_heads,
head_dim]` per rank, addressed through the engine's block bookkeeping
(`lmi_runtime.engine.kv_cache.BlockKVCacheManager`), which the scheduler claims blocks from."""

from __future__ import annotations

import math

import numpy as np
import torch

from lmi_runtime.engine.kv_cache import BlockKVCacheManager


def _zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed pool. On the CPU through calloc (numpy's zeros), whose large blocks are fresh
    pages the OS zeroes when first touched: `torch.zeros` writes every byte at once. For the
    19.85 GiB pool the README's int8 artifact plans on a 2-core, 23.5 GiB machine (served with
    LMI's default max batch of 256 and 4,096 tokens), `load_backend` took 22.7-24.4 s and left
    21.1 GiB resident that way, 4.1-4.5 s and 1.2-1.3 GiB this way.
    Zeroed, not empty: a padded read masks stale slots out of the softmax, and 0 × NaN would
    not be 0."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.zeros(math.prod(shape) * dtype.itemsize, dtype=np.uint8)).view(dtype).view(shape)


class PagedKVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, blocks: BlockKVCacheManager,
                 dtype: torch.dtype, device: torch.device):
        self.blocks = blocks
        self.pool = _zeroed((num_layers, 2, blocks.num_blocks * blocks.block_size, num_kv_heads, head_dim), dtype,
                            device)

    @property
    def block_size(self) -> int:
        return self.blocks.block_size
