"""The planner's KV-cache budget: a model's figures (from its config.json) fed to the one
formula the runtime also sizes its pool by (`lmi_runtime.engine.kv_budget`, whose docstring
states it), so a plan and a served pool for the same hardware agree."""

from __future__ import annotations

import math

from lmi_compile.plan.modelspec import DTYPE_BYTES, ModelSpec
from lmi_runtime.backends.tp_sharding import kv_heads_per_rank
from lmi_runtime.engine import kv_budget
from lmi_runtime.engine.kv_budget import FORMULA, KvCachePlan
from lmi_runtime.hardware import Hardware


def activation_reserve(spec: ModelSpec, dtype: str, tp: int, max_num_tokens: int, max_batch_size: int) -> int:
    return kv_budget.activation_reserve(
        hidden_size=spec.hidden_size, intermediate_per_rank=spec.intermediate_size * spec.experts_per_token // tp,
        vocab_size=spec.vocab_size, dtype_bytes=DTYPE_BYTES[dtype], max_num_tokens=max_num_tokens,
        max_batch_size=max_batch_size)


def kv_cache_plan(spec: ModelSpec, hardware: Hardware, *, weight_bytes: int, dtype: str, tp: int, pp: int,
                  utilization: float, max_num_tokens: int, max_batch_size: int, max_total_len: int) -> KvCachePlan:
    return kv_budget.kv_cache_plan(
        memory_per_device=hardware.memory_per_unit, utilization=utilization,
        weights_per_device=math.ceil(weight_bytes / (tp * pp)),
        reserve=activation_reserve(spec, dtype, tp, max_num_tokens, max_batch_size),
        bytes_per_token=spec.kv_bytes_per_token(dtype, tp=tp, pp=pp), kv_heads_per_device=kv_heads_per_rank(spec.num_kv_heads, tp),
        max_total_len=max_total_len)


__all__ = ["FORMULA", "KvCachePlan", "activation_reserve", "kv_cache_plan"]
