"""KV-cache budget: how many tokens of KV cache one device holds after weights and activations.

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
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from lmi_compile.plan.modelspec import DTYPE_BYTES, ModelSpec
from lmi_runtime.backends.tp_sharding import kv_heads_per_rank
from lmi_runtime.hardware import GiB, Hardware

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


def activation_reserve(spec: ModelSpec, dtype: str, tp: int, max_num_tokens: int, max_batch_size: int) -> int:
    ffn_per_rank = spec.intermediate_size * spec.experts_per_token // tp
    step = max_num_tokens * (2 * spec.hidden_size + 2 * ffn_per_rank) * DTYPE_BYTES[dtype]
    return RUNTIME_RESERVE + step + max_batch_size * spec.vocab_size * LOGIT_BYTES


def kv_cache_plan(spec: ModelSpec, hardware: Hardware, *, weight_bytes: int, dtype: str, tp: int, pp: int,
                  utilization: float, max_num_tokens: int, max_batch_size: int, max_total_len: int) -> KvCachePlan:
    memory = hardware.memory_per_unit
    usable = int(memory * utilization)
    weights = math.ceil(weight_bytes / (tp * pp))
    reserve = activation_reserve(spec, dtype, tp, max_num_tokens, max_batch_size)
    budget = usable - weights - reserve
    per_token = spec.kv_bytes_per_token(dtype, tp=tp, pp=pp)
    tokens = max(0, budget) // per_token
    return KvCachePlan(
        memory_per_device=memory, utilization=utilization, usable_bytes=usable, weights_per_device=weights,
        activation_reserve=reserve, bytes_per_device=budget, bytes_per_token=per_token,
        kv_heads_per_device=kv_heads_per_rank(spec.num_kv_heads, tp), tokens=tokens,
        max_full_sequences=tokens // max_total_len,
    )
