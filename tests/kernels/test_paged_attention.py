"""The paged-attention kernel against its plain-torch twin and against dense causal attention.

The Triton kernel runs here under Triton's interpreter (TRITON_INTERPRET=1, set before triton
is imported, in a subprocess so the flag stays out of this process); on a GPU the same test
file runs it compiled (scripts/gpu_check.py)."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
import torch.nn.functional as F

from lmi_runtime.kernels.paged_attention import AttnBatch, NewKV, paged_attention, plan_tiles, tokens_per_tile

BLOCK = 4


def make_case(q_lens, ctx_lens, heads=4, kv_heads=2, dim=16, dtype=torch.float32, seed=0):
    """Random caches with each sequence's context scattered over shuffled blocks."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-c // BLOCK) for c in ctx_lens]
    order = torch.randperm(sum(blocks_per_seq), generator=gen).tolist()
    num_blocks = sum(blocks_per_seq) + 1
    k_cache = torch.randn(num_blocks * BLOCK, kv_heads, dim, generator=gen).to(dtype)
    v_cache = torch.randn(num_blocks * BLOCK, kv_heads, dim, generator=gen).to(dtype)
    width = max(blocks_per_seq)
    tables = torch.zeros(len(q_lens), width, dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = torch.tensor([b + 1 for b in order[used: used + n]])
        used += n
    q = torch.randn(sum(q_lens), heads, dim, generator=gen).to(dtype)
    group = heads // kv_heads
    block_q = max(tokens_per_tile(n, group) for n in q_lens)
    seqs, starts = plan_tiles(q_lens, block_q)
    starts_of = torch.tensor([0] + q_lens[:-1]).cumsum(0)
    batch = AttnBatch(tables, torch.tensor(ctx_lens, dtype=torch.int32), starts_of.int(),
                      torch.tensor(q_lens, dtype=torch.int32), torch.tensor(seqs, dtype=torch.int32),
                      torch.tensor(starts, dtype=torch.int32), block_q, max(q_lens), max(ctx_lens))
    return q, k_cache, v_cache, batch


def punch(k_cache, v_cache, batch: AttnBatch):
    """Take this step's keys/values out of the caches (zeroed there) as the NewKV to write back."""
    slots = []
    for i in range(batch.block_tables.shape[0]):
        ctx, n = int(batch.ctx_lens[i]), int(batch.q_lens[i])
        slots += [int(batch.block_tables[i, p // BLOCK]) * BLOCK + p % BLOCK for p in range(ctx - n, ctx)]
    slots = torch.tensor(slots)
    # values as a strided view of a wider tensor, as the model's fused q/k/v projection hands them over
    wide = torch.cat([torch.zeros_like(v_cache[slots]), v_cache[slots]], dim=-1)
    new = NewKV(k_cache[slots].clone(), wide[..., v_cache.shape[-1]:], slots)
    k_holed, v_holed = k_cache.clone(), v_cache.clone()
    k_holed[slots] = 0
    v_holed[slots] = 0
    return k_holed, v_holed, new


def dense_reference(q, k_cache, v_cache, batch: AttnBatch):
    """Each sequence alone: its keys in order, plain causal attention."""
    outs = []
    for i in range(batch.block_tables.shape[0]):
        ctx, n, start = int(batch.ctx_lens[i]), int(batch.q_lens[i]), int(batch.q_starts[i])
        slots = torch.tensor([int(batch.block_tables[i, p // BLOCK]) * BLOCK + p % BLOCK for p in range(ctx)])
        keys, values = k_cache[slots].transpose(0, 1), v_cache[slots].transpose(0, 1)
        group = q.shape[1] // k_cache.shape[1]
        keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
        query = q[start: start + n].transpose(0, 1)
        mask = torch.arange(ctx) <= (ctx - n + torch.arange(n)).unsqueeze(1)
        outs.append(F.scaled_dot_product_attention(query, keys, values, attn_mask=mask).transpose(0, 1))
    return torch.cat(outs)


CASES = {
    "decode": ([1, 1, 1], [5, 17, 9]),
    "prefill": ([7, 3, 12], [7, 3, 12]),
    "chunked prefill beside decodes": ([1, 6, 1], [30, 14, 2]),
}


@pytest.mark.parametrize("name", CASES)
def test_torch_twin_writes_the_new_keys_then_matches_dense_attention(name):
    q, k, v, batch = make_case(*CASES[name])
    k_holed, v_holed, new = punch(k, v, batch)
    torch.testing.assert_close(paged_attention(q, k_holed, v_holed, new, batch, BLOCK), dense_reference(q, k, v, batch))
    torch.testing.assert_close((k_holed, v_holed), (k, v))


INTERPRETED = """
import sys, torch
sys.path.insert(0, {tests!r})
from test_paged_attention import CASES, BLOCK, make_case, dense_reference, punch
from lmi_runtime.kernels.paged_attention import _ARRIVALS, _triton_paged_attention
for name, (q_lens, ctx_lens) in CASES.items():
    for heads, kv_heads in ((4, 2), (4, 4), (6, 2)):
        for splits in (1, 3):
            q, k, v, batch = make_case(q_lens, ctx_lens, heads=heads, kv_heads=kv_heads)
            k_holed, v_holed, new = punch(k, v, batch)
            got = _triton_paged_attention(q, k_holed, v_holed, new, batch, BLOCK, splits=splits)
            torch.testing.assert_close(got, dense_reference(q, k, v, batch), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close((k_holed, v_holed), (k, v))
            # the last split of each (tile, KV head) combined them and put its count back to 0
            assert splits == 1 or not _ARRIVALS[q.device].any(), _ARRIVALS[q.device].nonzero()
print("ok")
"""


def test_triton_kernel_matches_dense_attention_in_the_interpreter(cli_env, python):
    pytest.importorskip("triton")
    env = cli_env | {"TRITON_INTERPRET": "1"}
    script = INTERPRETED.format(tests=os.path.dirname(__file__))
    done = subprocess.run([python, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
