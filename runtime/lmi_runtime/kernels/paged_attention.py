"""Attention that reads the paged KV cache in place: one Triton kernel for decode and prefill.

Why our own kernel: FlashInfer's paged wrappers need a JIT build (nvcc, minutes) or a cubin
package larger than a slim runtime should carry, and cuDNN/SDPA only take contiguous keys, so
the sequence's context had to be gathered out of the pool first (27% of GPU time at batch 64,
GPU-NOTES.md) and SDPA rebuilt a cuDNN plan for every new shape. This kernel walks each
sequence's block table, so nothing is copied and no plan depends on the shape.

Tokens come packed: every sequence brings `q_len` new tokens (1 when decoding, the prompt or a
chunk of it when prefilling) whose keys were already written to the cache, and attends over its
first `ctx_len` cached positions, causally. A program handles one tile of `BLOCK_Q` tokens of
one sequence times the `G` query heads that share one KV head (GQA), so decode loads each key
once per group. Accumulation is in fp32; fp32 models use IEEE dots (no TF32) so that greedy
tokens match transformers exactly.

`torch_paged_attention` is the same computation in plain torch (gather + SDPA): the CPU path,
and the reference the kernel is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # the CPU-only install has no triton; the CUDA path needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None


@dataclass
class AttnBatch:
    """Where each sequence of a packed batch reads and writes; int32 tensors on the device."""

    block_tables: torch.Tensor  # [B, W] cache blocks of each sequence
    ctx_lens: torch.Tensor  # [B] cached positions after this step's tokens are written
    q_starts: torch.Tensor  # [B] offset of the sequence's first token in the packed batch
    q_lens: torch.Tensor  # [B] new tokens of the sequence in this step
    tile_seq: torch.Tensor  # [tiles] sequence of each kernel tile
    tile_start: torch.Tensor  # [tiles] first token (within the sequence's new ones) of the tile
    block_q: int  # tokens per tile
    max_q_len: int  # longest q_len (the torch path pads to it)
    max_ctx_len: int  # longest ctx_len (the torch path pads to it)


def tokens_per_tile(q_len: int, group: int) -> int:
    """Decode: one token (its G heads fill the tile); prefill: enough tokens for 64 rows."""
    if q_len <= 1:
        return 1
    return max(1, 64 // triton_group(group))


def triton_group(group: int) -> int:
    return 1 << (group - 1).bit_length()


def plan_tiles(q_lens: list[int], block_q: int) -> tuple[list[int], list[int]]:
    seqs, starts = [], []
    for seq, n in enumerate(q_lens):
        for start in range(0, n, block_q):
            seqs.append(seq)
            starts.append(start)
    return seqs, starts


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: AttnBatch, block_size: int
) -> torch.Tensor:
    """q: [N, H, D] packed new tokens; caches: [slots, KVH, D]; returns [N, H, D]."""
    if q.is_cuda and triton is not None:
        return _triton_paged_attention(q, k_cache, v_cache, batch, block_size)
    return torch_paged_attention(q, k_cache, v_cache, batch, block_size)


def torch_paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: AttnBatch, block_size: int
) -> torch.Tensor:
    """Gather each sequence's context into a padded batch and run SDPA with a causal mask."""
    num_seqs = batch.block_tables.shape[0]
    device = q.device
    width = batch.max_ctx_len
    ctx_pos = torch.arange(width, device=device)
    blocks = batch.block_tables.long().gather(1, (ctx_pos // block_size).clamp(max=batch.block_tables.shape[1] - 1)
                                              .expand(num_seqs, width))
    read = blocks * block_size + ctx_pos % block_size  # [B, L]
    q_index = batch.q_starts.long().unsqueeze(1) + torch.arange(batch.max_q_len, device=device)  # [B, T]
    q_valid = torch.arange(batch.max_q_len, device=device) < batch.q_lens.unsqueeze(1)
    q_pos = (batch.ctx_lens - batch.q_lens).unsqueeze(1) + torch.arange(batch.max_q_len, device=device)
    mask = (ctx_pos <= q_pos.unsqueeze(-1)) & (ctx_pos < batch.ctx_lens.view(-1, 1, 1))  # [B, T, L]
    queries = q[torch.where(q_valid, q_index, 0)].transpose(1, 2)  # [B, H, T, D]
    keys = k_cache[read].transpose(1, 2)  # [B, KVH, L, D]
    values = v_cache[read].transpose(1, 2)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask.unsqueeze(1), enable_gqa=True)
    return out.transpose(1, 2)[q_valid]  # [N, H, D] in packed order


def _triton_paged_attention(q, k_cache, v_cache, batch: AttnBatch, block_size: int) -> torch.Tensor:
    num_tokens, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    out = torch.empty_like(q)
    grid = (batch.tile_seq.shape[0], kv_heads)
    _paged_attention_kernel[grid](
        q, k_cache, v_cache, out,
        batch.block_tables, batch.ctx_lens, batch.q_starts, batch.q_lens, batch.tile_seq, batch.tile_start,
        1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        out.stride(0), out.stride(1), batch.block_tables.stride(0),
        G=group, GP=triton_group(group), BLOCK_Q=batch.block_q, ROWS=max(16, batch.block_q * triton_group(group)),
        D=dim, PAGE=block_size,
        BLOCK_N=64 if dim <= 128 else 32,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=2,
    )
    return out


if triton is not None:

    @triton.jit
    def _paged_attention_kernel(
        Q, K, V, O,
        block_tables, ctx_lens, q_starts, q_lens, tile_seq, tile_start,
        scale,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_on, stride_oh, stride_bt,
        G: tl.constexpr, GP: tl.constexpr, BLOCK_Q: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr,
        PAGE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
    ):
        tile = tl.program_id(0)
        kv_head = tl.program_id(1)
        seq = tl.load(tile_seq + tile)
        first = tl.load(tile_start + tile)
        ctx = tl.load(ctx_lens + seq)
        q_len = tl.load(q_lens + seq)
        q_start = tl.load(q_starts + seq)

        # rows: BLOCK_Q tokens x GP heads (GP >= G, padded to a power of two), at least 16 for tl.dot
        row = tl.arange(0, ROWS)
        tok = first + row // GP
        head = row % GP
        valid = (head < G) & (tok < q_len) & (row < BLOCK_Q * GP)
        pos = ctx - q_len + tok  # absolute position of each row's token
        d = tl.arange(0, D)

        q_ptrs = Q + (q_start + tok)[:, None] * stride_qn + (kv_head * G + head)[:, None] * stride_qh + d[None, :]
        q = tl.load(q_ptrs, mask=valid[:, None], other=0.0)

        m_i = tl.full([ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, D], tl.float32)
        last = tl.minimum(ctx, ctx - q_len + first + BLOCK_Q)  # keys past the tile's last token are masked anyway
        start = 0
        while start < last:  # a while loop: Triton's interpreter cannot range() over a loaded scalar
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < last
            page = tl.load(block_tables + seq * stride_bt + n // PAGE, mask=n_ok, other=0)
            slot = (page * PAGE + n % PAGE).to(tl.int64)
            k = tl.load(K + slot[:, None] * stride_kn + kv_head * stride_kh + d[None, :], mask=n_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            s = tl.where((n[None, :] <= pos[:, None]) & n_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + slot[:, None] * stride_kn + kv_head * stride_kh + d[None, :], mask=n_ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
            start += BLOCK_N
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = O + (q_start + tok)[:, None] * stride_on + (kv_head * G + head)[:, None] * stride_oh + d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=valid[:, None])
