"""The served KV-cache capacity equals the plan's for the same hardware (a CPU with a fixed
memory figure), both when the runtime reads the artifact's planned budget and when it measures
the device itself: one formula (lmi_runtime.engine.kv_budget) on both sides."""

from __future__ import annotations

import json

import pytest
import torch

from lmi_compile.plan import make_plan
from lmi_compile.recipe import Recipe
from lmi_runtime.backends.llama_model import LlamaArgs
from lmi_runtime.backends.loader import device_kv_plan, load_backend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.locate import inspect_folder
from profiled import CPU, LIMITS, planned_profile, profiled_artifact

BLOCK = EngineConfig().kv_block_size


@pytest.fixture(scope="module")
def plan(smollm2_dir):
    recipe = Recipe(source={"uri": "bundled://smollm2"}, target={"backend": "torch"}, limits=LIMITS)
    return make_plan(recipe, json.loads((smollm2_dir / "config.json").read_text()), CPU)


def test_served_capacity_is_the_planned_budget(plan, smollm2_dir, smollm2_artifact, tmp_path):
    kv = plan.kv_cache
    # the budget binds, not the batch cap: 8 sequences of 2,048 tokens would take more
    assert kv.tokens < LIMITS["max_batch_size"] * LIMITS["max_total_len"]
    art = profiled_artifact(smollm2_artifact, tmp_path / "art", [planned_profile(smollm2_dir, "cpu", "", CPU)])
    backend = load_backend(inspect_folder(art, verify=False), EngineConfig(max_batch_size=8, max_model_len=2048))
    assert backend.kv.blocks.capacity_tokens == kv.tokens // BLOCK * BLOCK  # the plan's tokens in whole blocks
    assert backend.info.details["kv_cache_tokens"] == str(kv.tokens // BLOCK * BLOCK)


def test_measured_budget_uses_the_planners_formula(plan, smollm2_dir):
    """The runtime's path without a plan (free GPU memory), fed the same memory figure and the
    planned weights: the same KV-cache plan, field for field."""
    args = LlamaArgs.from_hf(json.loads((smollm2_dir / "config.json").read_text()))
    config = EngineConfig(max_batch_size=LIMITS["max_batch_size"], gpu_memory_utilization=plan.kv_cache.utilization)
    served = device_kv_plan(args, config, torch.float32, LIMITS["max_total_len"], memory=CPU.memory_bytes,
                            in_use=plan.weights.bytes_per_device)
    assert served == plan.kv_cache


def _resident_bytes() -> int:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024


def test_a_cpu_pool_is_zero_and_takes_memory_only_as_it_is_written():
    """A CPU start allocates the whole planned pool (20 GiB for the README's artifact here):
    it must not write every byte up front, yet every slot must read as zero."""
    from lmi_runtime.backends.paged_cache import PagedKVCache
    from lmi_runtime.engine.kv_cache import BlockKVCacheManager

    before = _resident_bytes()
    kv = PagedKVCache(4, 8, 64, BlockKVCacheManager(8192, 16), torch.bfloat16, torch.device("cpu"))  # 1 GiB
    assert kv.pool.shape == (4, 2, 8192 * 16, 8, 64) and kv.pool.dtype == torch.bfloat16
    assert kv.pool.nbytes == 2**30
    assert _resident_bytes() - before < 2**30 // 8
    kv.pool[3, 1, -5:] = 1.5  # an ordinary tensor: written and read in place
    assert kv.pool[3, 1, -5:].eq(1.5).all() and kv.pool[0, 0, :4096].eq(0).all() and kv.pool[2].eq(0).all()
