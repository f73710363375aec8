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

from lmi_runtime.kernels import multiprocessors

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


@dataclass
class NewKV:
    """This step's keys/values ([N, KVH, D], packed like q) and the cache slot of each token."""

    k: torch.Tensor
    v: torch.Tensor
    slots: torch.Tensor  # [N] int64


def paged_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, new: NewKV, batch: AttnBatch, block_size: int
) -> torch.Tensor:
    """Write this step's keys/values into the cache, then attend. q: [N, H, D] packed new
    tokens; caches: [slots, KVH, D]; returns [N, H, D]."""
    if q.is_cuda and triton is not None:
        return _triton_paged_attention(q, k_cache, v_cache, new, batch, block_size)
    k_cache.index_copy_(0, new.slots, new.k)
    v_cache.index_copy_(0, new.slots, new.v)
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


def num_splits(tiles: int, kv_heads: int, device: torch.device) -> int:
    """Decode at a small batch has too few (sequence, KV head) programs to keep the GPU's
    memory busy; split each sequence's context over several programs (flash-decoding) until
    there are about two programs per multiprocessor."""
    return max(1, min(16, 2 * multiprocessors(device) // max(1, tiles * kv_heads)))


def _triton_paged_attention(q, k_cache, v_cache, new: NewKV, batch: AttnBatch, block_size: int,
                            splits: int | None = None) -> torch.Tensor:
    num_tokens, heads, dim = q.shape
    kv_heads = k_cache.shape[1]
    group, padded = heads // kv_heads, triton_group(heads // kv_heads)
    tiles = batch.tile_seq.shape[0]
    # one token per sequence: the program that owns it writes its key/value (no extra launch)
    decode = batch.block_q == 1 and batch.max_q_len == 1
    if not decode:
        k_cache.index_copy_(0, new.slots, new.k)
        v_cache.index_copy_(0, new.slots, new.v)
    if splits is None or not decode:
        splits = num_splits(tiles, kv_heads, q.device) if decode else 1
    rows = max(16, batch.block_q * padded)
    out = torch.empty_like(q)
    if splits > 1:
        part = torch.empty((tiles, kv_heads, splits, rows, dim), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((2, tiles, kv_heads, splits, rows), dtype=torch.float32, device=q.device)
    else:
        part = part_ml = out  # unused
    meta = dict(G=group, GP=padded, BLOCK_Q=batch.block_q, ROWS=rows, D=dim)
    _paged_attention_kernel[(tiles, kv_heads, splits)](
        q, k_cache, v_cache, out, new.k, new.v, new.slots, part, part_ml, _arrivals(q.device, tiles * kv_heads),
        batch.block_tables, batch.ctx_lens, batch.q_starts, batch.q_lens, batch.tile_seq, batch.tile_start,
        1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        out.stride(0), out.stride(1), batch.block_tables.stride(0), new.k.stride(0), new.k.stride(1),
        new.v.stride(0), new.v.stride(1),
        **meta, PAGE=block_size, BLOCK_N=64 if dim <= 128 else 32,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", WRITE_NEW=decode, SPLITS=splits,
        # decode over many (sequence, head) programs reads fastest with 2 warps each (a sweep on
        # the H100: 2.58 against 2.40 TB/s at batch 64, 7B heads); split and prefill tiles keep 4
        num_warps=2 if decode and splits == 1 else 4, num_stages=2,
    )
    return out


_ARRIVALS: dict[torch.device, torch.Tensor] = {}


def _arrivals(device: torch.device, need: int) -> torch.Tensor:
    """Per (tile, KV head): how many of its context splits have finished in this call. The last
    to finish combines them and puts the count back to 0, so between calls it is all zeros; a
    separate combining kernel cost ~3 µs a layer at batch 1 on the H100, most of it its launch.
    Allocated at the first split call (graph warm-up runs before capture), grown if a call needs
    more (splits only come with fewer tiles x KV heads than multiprocessors)."""
    have = _ARRIVALS.get(device)
    if have is None or have.numel() < need:
        have = _ARRIVALS[device] = torch.zeros(max(need, 1024), dtype=torch.int32, device=device)
    return have


if triton is not None:

    @triton.jit
    def _tile_rows(tile, tile_seq, tile_start, q_lens, q_starts,
                   G: tl.constexpr, GP: tl.constexpr, BLOCK_Q: tl.constexpr, ROWS: tl.constexpr):
        """A tile's rows: BLOCK_Q tokens x GP heads (GP >= G, padded to a power of two), at
        least 16 for tl.dot; each row's token (within the sequence's new ones), head, validity."""
        seq = tl.load(tile_seq + tile)
        first = tl.load(tile_start + tile)
        q_len = tl.load(q_lens + seq)
        q_start = tl.load(q_starts + seq)
        row = tl.arange(0, ROWS)
        tok = first + row // GP
        head = row % GP
        valid = (head < G) & (tok < q_len) & (row < BLOCK_Q * GP)
        return seq, first, q_len, q_start, row, tok, head, valid

    @triton.jit
    def _paged_attention_kernel(
        Q, K, V, O, K_NEW, V_NEW, NEW_SLOTS, PART, PART_ML, ARRIVALS,
        block_tables, ctx_lens, q_starts, q_lens, tile_seq, tile_start,
        scale,
        stride_qn, stride_qh, stride_kn, stride_kh, stride_on, stride_oh, stride_bt, stride_nkn, stride_nkh,
        stride_nvn, stride_nvh,
        G: tl.constexpr, GP: tl.constexpr, BLOCK_Q: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr,
        PAGE: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, WRITE_NEW: tl.constexpr,
        SPLITS: tl.constexpr,
    ):
        tile = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        seq, first, q_len, q_start, row, tok, head, valid = _tile_rows(
            tile, tile_seq, tile_start, q_lens, q_starts, G, GP, BLOCK_Q, ROWS)
        ctx = tl.load(ctx_lens + seq)
        pos = ctx - q_len + tok  # absolute position of each row's token
        d = tl.arange(0, D)

        last = tl.minimum(ctx, ctx - q_len + first + BLOCK_Q)  # keys past the tile's last token are masked anyway
        span = tl.cdiv(tl.cdiv(last, SPLITS), BLOCK_N) * BLOCK_N  # this split's keys: [lo, hi)
        lo = split * span
        hi = tl.minimum(last, lo + span)
        if WRITE_NEW:  # decode: the split holding the new token writes its key/value, then reads
            if (ctx - 1 >= lo) & (ctx - 1 < hi):
                slot = tl.load(NEW_SLOTS + q_start)
                dst = slot * stride_kn + kv_head * stride_kh + d
                tl.store(K + dst, tl.load(K_NEW + q_start * stride_nkn + kv_head * stride_nkh + d))
                tl.store(V + dst, tl.load(V_NEW + q_start * stride_nvn + kv_head * stride_nvh + d))
            tl.debug_barrier()

        q_ptrs = Q + (q_start + tok)[:, None] * stride_qn + (kv_head * G + head)[:, None] * stride_qh + d[None, :]
        q = tl.load(q_ptrs, mask=valid[:, None], other=0.0)
        m_i = tl.full([ROWS], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS], tl.float32)
        acc = tl.zeros([ROWS, D], tl.float32)
        start = lo
        while start < hi:  # a while loop: Triton's interpreter cannot range() over a loaded scalar
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < hi
            page = tl.load(block_tables + seq * stride_bt + n // PAGE, mask=n_ok, other=0)
            slot = (page * PAGE + n % PAGE).to(tl.int64)
            k = tl.load(K + slot[:, None] * stride_kn + kv_head * stride_kh + d[None, :], mask=n_ok[:, None], other=0.0)
            # asked for with the keys, not after the softmax: one memory round trip a tile, not two
            v = tl.load(V + slot[:, None] * stride_kn + kv_head * stride_kh + d[None, :], mask=n_ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            s = tl.where((n[None, :] <= pos[:, None]) & n_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
            start += BLOCK_N
        if SPLITS == 1:
            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            o_ptrs = O + (q_start + tok)[:, None] * stride_on + (kv_head * G + head)[:, None] * stride_oh + d[None, :]
            tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=valid[:, None])
        else:  # unnormalized partials; the split that finishes last combines them
            base = ((tile * tl.num_programs(1) + kv_head) * SPLITS + split) * ROWS
            # valid rows only: decode of a model without GQA fills 1 of the tile's 16
            tl.store(PART + (base + row)[:, None] * D + d[None, :], acc, mask=valid[:, None])
            ml_stride = tl.num_programs(0) * tl.num_programs(1) * SPLITS * ROWS
            tl.store(PART_ML + base + row, m_i, mask=valid)
            tl.store(PART_ML + ml_stride + base + row, l_i, mask=valid)
            tl.debug_barrier()  # all of this program's partials are written before it counts itself
            count = ARRIVALS + tile * tl.num_programs(1) + kv_head
            if tl.atomic_add(count, 1, sem="acq_rel", scope="gpu") == SPLITS - 1:
                _combine_splits(PART, PART_ML, O, q_start, tok, head, valid, row, tile, kv_head, stride_on, stride_oh,
                                G, ROWS, D, SPLITS)
                tl.store(count, 0)

    @triton.jit
    def _combine_splits(PART, PART_ML, O, q_start, tok, head, valid, row, tile, kv_head, stride_on, stride_oh,
                        G: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr):
        """The output of a (tile, KV head) from its splits' partials, weighted by their maxima
        (read past L1: other multiprocessors wrote them)."""
        d = tl.arange(0, D)
        ml_stride = tl.num_programs(0) * tl.num_programs(1) * SPLITS * ROWS
        base = (tile * tl.num_programs(1) + kv_head) * SPLITS * ROWS
        m_max = tl.full([ROWS], float("-inf"), tl.float32)
        for s in tl.static_range(SPLITS):
            m_max = tl.maximum(m_max, tl.load(PART_ML + base + s * ROWS + row, mask=valid, other=0.0,
                                              cache_modifier=".cg"))
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        acc = tl.zeros([ROWS, D], tl.float32)
        l_sum = tl.zeros([ROWS], tl.float32)
        for s in tl.static_range(SPLITS):
            weight = tl.exp(tl.load(PART_ML + base + s * ROWS + row, mask=valid, other=0.0, cache_modifier=".cg")
                            - m_safe)
            l_sum += weight * tl.load(PART_ML + ml_stride + base + s * ROWS + row, mask=valid, other=0.0,
                                      cache_modifier=".cg")
            acc += weight[:, None] * tl.load(PART + (base + s * ROWS + row)[:, None] * D + d[None, :],
                                             mask=valid[:, None], other=0.0, cache_modifier=".cg")
        out = acc / tl.where(l_sum == 0.0, 1.0, l_sum)[:, None]
        o_ptrs = O + (q_start + tok)[:, None] * stride_on + (kv_head * G + head)[:, None] * stride_oh + d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=valid[:, None])
