"""`y = x @ dequant(W).T` with the weight dequantized inside the kernel, tile by tile: one
Triton kernel for 16-bit, int8, fp8 and grouped int4 weights (`quant.packed` layouts).

Why: decode reads every weight once per step, so its speed is the weight bytes over the
memory bandwidth. Dequantizing a whole weight first (what serving dequantized checkpoints
does) reads the quantized bytes and then the 16-bit ones again; reading 1 or ½ byte per
weight and widening it in registers is where int8/int4 can gain. It also takes 16-bit weights
(`dense`), so that `scripts/bench_matmul.py` compares it with cuBLAS on the same tiles: on the
H200 they were level (3.59 vs 3.62 ms for a 7B decode step's matmuls), so dense layers stay
with cuBLAS (`quant.linear`), except at one token, where `kernels.gemv` beats both.

Tiles: `BLOCK_M` rows of x (16 is the smallest tensor-core tile; decode pads its few tokens
up to it, which costs nothing when the weights' bytes dominate), `BLOCK_N` output channels,
`BLOCK_K` of the reduction. An int4 tile spans whole quantization groups (each group's scale and
zero are applied before the dot): with one group a tile (64 bytes a row) the loads were too
small to keep the memory busy, and int4 ran no faster than fp16 (H200, `bench_matmul.py`).

Split-K: decode's narrow layers (o_proj, down_proj: 4096 outputs, 128 tiles of 32) gave one
program to each of the H200's 132 SMs, too few loads in flight to reach the bandwidth (int4
down_proj read 0.54 TB/s); there the reduction is split over up to 8 programs that add their
partial sums into an fp32 buffer.
"""

from __future__ import annotations

import torch

from lmi_runtime.kernels import multiprocessors

try:  # the CPU-only install has no triton; the CUDA path needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None

KIND_CODES = {"dense": 0, "int8": 1, "int4": 2, "fp8": 3}
GROUP_SIZES = "powers of two from 32 to 512"  # what `supports_group` accepts, for messages


def supports_group(size: int) -> bool:
    """int4 group sizes the kernel tiles by (GROUP_SIZES: a tile holds whole groups)."""
    return 32 <= size <= 512 and size & (size - 1) == 0


def _configs() -> list:
    """The tiles that won on the H200 (`bench_matmul.py`), few so that a start autotunes fast."""
    small = [(16, bn, bk, s) for bn, bk, s in ((32, 256, 3), (64, 256, 3), (32, 512, 2), (16, 256, 4))]
    large = [(bm, bn, bk, s) for bm, bn, bk, s in ((64, 32, 256, 3), (64, 64, 128, 3), (64, 128, 64, 3),
                                                   (64, 32, 128, 4), (32, 32, 256, 3))]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=s, num_warps=4)
            for bm, bn, bk, s in small + large]


def _prune(configs, named_args, **kwargs):
    """Keep tiles that fit the problem: BLOCK_M by the token count (16 for decode), and for
    int4 BLOCK_K of whole groups."""
    m, group = named_args["M"], kwargs.get("GROUP", named_args.get("GROUP", 0))
    want_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    return [c for c in configs
            if (c.kwargs["BLOCK_M"] == want_m or (want_m == 32 and c.kwargs["BLOCK_M"] == 64))
            and c.kwargs["BLOCK_K"] >= group]


def _m_bucket(m: int) -> int:
    """Autotune once per power-of-two token count rather than for every batch size."""
    return 1 << max(0, (m - 1).bit_length())


def split_k(m: int, n: int, k: int, device: torch.device) -> int:
    """How many programs share one output tile's reduction: enough for two programs an SM
    at decode sizes (tiles counted at 32 channels), each left at least 512 of K."""
    if device.type != "cuda" or m > 16:
        return 1
    split, tiles = 1, triton.cdiv(n, 32)
    while tiles * split < 2 * multiprocessors(device) and split < 8 and k // (2 * split) >= 512:
        split *= 2
    return split


if triton is not None:

    @triton.jit
    def _small_uints(v, FAST: tl.constexpr):
        """Integers 0..255 as fp16 without the int-to-float converter, which runs at a quarter
        of the FMA rate and left int8/int4 decode at half the memory bandwidth: the bits
        0x6400 | v are the fp16 number 1024 + v (v fills the mantissa), so subtracting 1024
        is exact. FAST=False (fp32 models, tests): the plain conversion to fp32."""
        if FAST:
            bits = v.to(tl.uint16) | tl.full((1,), 0x6400, tl.uint16)
            out = bits.to(tl.float16, bitcast=True) - tl.full((1,), 1024.0, tl.float16)
        else:
            out = v.to(tl.float32)
        return out

    @triton.jit
    def _int4_half(nibbles, scale, zero, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, HALF: tl.constexpr,
                   FAST: tl.constexpr):
        """[BLOCK_N, GROUPS * HALF] nibbles -> weights, each group's run of HALF columns with
        its own scale and zero ([BLOCK_N, GROUPS])."""
        v = tl.reshape(_small_uints(nibbles, FAST), (BLOCK_N, GROUPS, HALF))
        w = (v - zero[:, :, None]) * scale[:, :, None]
        return tl.reshape(w, (BLOCK_N, GROUPS * HALF))

    @triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K", "KIND", "GROUP", "SPLIT_K"],
                     prune_configs_by={"early_config_prune": _prune}, reset_to_zero=["y_ptr"],
                     cache_results=True)  # kept in Triton's cache dir, so a kernel cache carries them
    @triton.jit
    def _matmul_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, M, N, K, M_BUCKET,
                       stride_xm, stride_qn, stride_sn, stride_ym,
                       KIND: tl.constexpr, GROUP: tl.constexpr, PRECISION: tl.constexpr, FAST: tl.constexpr,
                       SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        pid_k = tl.program_id(2)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = rm < M
        n_ok = rn < N
        tiles = tl.cdiv(K, BLOCK_K)
        first, last = pid_k * tiles // SPLIT_K, (pid_k + 1) * tiles // SPLIT_K
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if KIND == 2:  # int4: a tile holds GROUPS whole groups; per group, low nibbles the first half, high the second
            HALF: tl.constexpr = GROUP // 2
            GROUPS: tl.constexpr = BLOCK_K // GROUP
            c = tl.arange(0, BLOCK_K // 2)  # packed byte column of the tile
            c_group, c_pos = c // HALF, c % HALF
            r = tl.arange(0, GROUPS)
            for t in range(first, last):
                g = t * GROUPS
                c_ok = (g + c_group) < K // GROUP
                r_ok = (g + r) < K // GROUP
                x_at = x_ptr + rm[:, None] * stride_xm + ((g + c_group) * GROUP + c_pos)[None, :]
                x_low = tl.load(x_at, mask=m_ok[:, None] & c_ok[None, :], other=0.0)
                x_high = tl.load(x_at + HALF, mask=m_ok[:, None] & c_ok[None, :], other=0.0)
                packed = tl.load(q_ptr + rn[:, None] * stride_qn + (t * (BLOCK_K // 2) + c)[None, :],
                                 mask=n_ok[:, None] & c_ok[None, :], other=0)
                sz_at = rn[:, None] * stride_sn + (g + r)[None, :]
                sz_ok = n_ok[:, None] & r_ok[None, :]
                scale = tl.load(s_ptr + sz_at, mask=sz_ok, other=0.0)
                zero = _small_uints(tl.load(z_ptr + sz_at, mask=sz_ok, other=0), FAST)
                w_low = _int4_half(packed & 15, scale, zero, BLOCK_N, GROUPS, HALF, FAST).to(x_low.dtype)
                w_high = _int4_half(packed >> 4, scale, zero, BLOCK_N, GROUPS, HALF, FAST).to(x_low.dtype)
                acc = tl.dot(x_low, tl.trans(w_low), acc, input_precision=PRECISION)
                acc = tl.dot(x_high, tl.trans(w_high), acc, input_precision=PRECISION)
        else:
            rk = tl.arange(0, BLOCK_K)
            for t in range(first, last):
                k0 = t * BLOCK_K
                k_ok = (k0 + rk) < K
                x = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + rk)[None, :], mask=m_ok[:, None] & k_ok[None, :],
                            other=0.0)
                q = tl.load(q_ptr + rn[:, None] * stride_qn + (k0 + rk)[None, :], mask=n_ok[:, None] & k_ok[None, :],
                            other=0.0)
                if KIND == 1:  # int8 -> 0..255 -> exact 16-bit floats, minus the offset
                    w = (_small_uints((q.to(tl.int16) + 128).to(tl.uint8), FAST) - 128).to(x.dtype)
                else:
                    w = q.to(x.dtype)
                acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
        if KIND == 1 or KIND == 3:  # per-channel scale, applied once after the reduction
            acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        y_at = y_ptr + rm[:, None] * stride_ym + rn[None, :]
        if SPLIT_K == 1:
            tl.store(y_at, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
        else:
            tl.atomic_add(y_at, acc, mask=m_ok[:, None] & n_ok[None, :])


def matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor | None, zero: torch.Tensor | None, kind: str,
           group: int = 0, split: int | None = None) -> torch.Tensor:
    """x [M, K] (16-bit or fp32, contiguous rows) times the [N, K] weight `q` of `kind`
    (`dense`: q is the weight itself) -> [M, N] in x's dtype. `split`: programs per output
    tile's reduction (default: `split_k`)."""
    m, k = x.shape
    n = q.shape[0]
    code = KIND_CODES[kind]
    if code == 2 and not supports_group(group):
        raise ValueError(f"int4 group size {group}: the kernel takes {GROUP_SIZES}")
    group = group if code == 2 else 0
    split = split or split_k(m, n, k, x.device)
    if split == 1:
        y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    else:  # the programs add into it
        y = torch.zeros((m, n), device=x.device, dtype=torch.float32)
    dummy = q if scale is None else scale
    args = (x, q, dummy, zero if zero is not None else dummy, y, m, n, k)
    strides = (x.stride(0), q.stride(0), scale.stride(0) if scale is not None else 0, y.stride(0))
    _matmul_kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]), split)](
        *args, _m_bucket(m), *strides, KIND=code, GROUP=group,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32", FAST=x.dtype != torch.float32, SPLIT_K=split,
    )
    return y if split == 1 else y.to(x.dtype)
