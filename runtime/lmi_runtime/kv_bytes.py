"""Bytes one token's keys and values take on one rank: the formula the planner sizes the plan's
KV cache with (`lmi_compile.plan.modelspec`) and the runtime sizes its pool with
(`lmi_runtime.backends.loader`), kept here so the two cannot drift apart."""

from __future__ import annotations


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """2 (K and V) × layers × KV heads × head_dim × bytes per element, for the layers and KV
    heads one rank holds."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes
