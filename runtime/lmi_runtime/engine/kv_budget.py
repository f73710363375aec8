"""KV-cache budget: how many tokens of KV cache one device holds after weights and activations.

One implementation for both sides: the planner (`lmi_compile.plan.memory`) calls it with the
figures of the hardware it plans for, the runtime with the device it runs on (when the artifact
carries no planned budget), so a plan and a served pool for the same hardware agree.

    usable             = memory_per_device × utilization
    weights_per_device = ceil(weight_bytes / (tp × pp))            (vocab and heads are sharded)
    activation_reserve = 1 GiB                                      (CUDA/Neuron runtime, workspaces, graphs)
                       + max_num_tokens × (2·hidden + 2·intermediate·experts_per_token / tp) × dtype_bytes
                                                                    (one forward step's live activations:
                                                                     residual + normed input, and the MLP's
                                                                     two intermediate tensors on this rank)
                       + max_batch_size × vocab × 4                 (fp32 logits of each sequence's last token)
    bytes_per_device   = usable − weights_per_device − activation_reserve
    bytes_per_token    = 2 × ceil(layers / pp) × max(1, kv_heads / tp) × head_dim × dtype_bytes
    tokens             = bytes_per_device // bytes_per_token

KV heads are split over TP ranks; with fewer KV heads than ranks (GQA/MQA) each KV head is
replicated so that every rank holds one, which is why a rank never holds less than one head.
The runtime allocates the budget in whole blocks, capped at what `max_batch_size` sequences of
the maximum length can ever use (`pool_blocks`): more would never be touched.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

GiB = 1 << 30
RUNTIME_RESERVE = 1 * GiB
LOGIT_BYTES = 4
FORMULA = (
    "bytes_per_device = memory_per_device × utilization − weights / (tp × pp) − activation_reserve; "
    "activation_reserve = 1 GiB + max_num_tokens × (2·hidden + 2·intermediate·experts_per_token / tp) × dtype_bytes "
    "+ max_batch_size × vocab × 4; "
    "bytes_per_token = 2 × ceil(layers / pp) × max(1, kv_heads / tp) × head_dim × dtype_bytes; "
    "tokens = bytes_per_device // bytes_per_token"
)


class KvCachePlan(BaseModel):
    formula: str = FORMULA
    memory_per_device: int
    utilization: float
    usable_bytes: int
    weights_per_device: int
    activation_reserve: int
    bytes_per_device: int  # KV-cache bytes on each device (negative: the model does not fit)
    bytes_per_token: int  # KV bytes one token takes on one device
    kv_heads_per_device: int
    tokens: int  # tokens of KV cache the deployment holds (every rank holds its share of each token)
    max_full_sequences: int  # sequences of max_total_len that fit at once

    def fits(self, max_total_len: int) -> bool:
        """At least one full-length sequence fits."""
        return self.tokens >= max_total_len

    def needed_bytes(self, max_total_len: int) -> int:
        """Per device: weights + activation reserve + one full-length sequence's KV cache."""
        return self.weights_per_device + self.activation_reserve + max_total_len * self.bytes_per_token


def activation_reserve(*, hidden_size: int, intermediate_per_rank: int, vocab_size: int, dtype_bytes: int,
                       max_num_tokens: int, max_batch_size: int) -> int:
    """`intermediate_per_rank`: intermediate_size × experts_per_token // tp."""
    step = max_num_tokens * (2 * hidden_size + 2 * intermediate_per_rank) * dtype_bytes
    return RUNTIME_RESERVE + step + max_batch_size * vocab_size * LOGIT_BYTES


def kv_cache_plan(*, memory_per_device: int, utilization: float, weights_per_device: int, reserve: int,
                  bytes_per_token: int, kv_heads_per_device: int, max_total_len: int) -> KvCachePlan:
    usable = int(memory_per_device * utilization)
    budget = usable - weights_per_device - reserve
    tokens = max(0, budget) // bytes_per_token
    return KvCachePlan(
        memory_per_device=memory_per_device, utilization=utilization, usable_bytes=usable,
        weights_per_device=weights_per_device, activation_reserve=reserve, bytes_per_device=budget,
        bytes_per_token=bytes_per_token, kv_heads_per_device=kv_heads_per_device, tokens=tokens,
        max_full_sequences=tokens // max_total_len,
    )


def pool_blocks(budget_bytes: int, bytes_per_token: int, block_size: int, max_batch_size: int, max_len: int) -> int:
    """Blocks the runtime allocates: the budget in whole blocks (so the pool holds the plan's
    tokens, rounded down to a block), at most what a full batch of max-length sequences can use,
    plus block 0, the scratch block; at least 2."""
    useful = max_batch_size * math.ceil(max_len / block_size)
    return 1 + max(1, min(useful, max(0, budget_bytes) // (bytes_per_token * block_size)))
