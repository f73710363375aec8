"""`y = x @ W.T` for one token and a 16-bit or fp32 weight, on CUDA cores: the decode step of
a single stream.

Why not cuBLAS: at one token a matmul only streams its weight, and cuBLAS's kernels read it at
2.2-2.8 TB/s on the H100, while this one reads 2.6-3.1 (`torch.sum` reads 3.07 there). A 7B
decode step's matmuls took 4.59 ms against cuBLAS's 5.03 (1.10×; a sweep over tiles on the
H100, CUDA graphs over weight copies that defeat the L2 cache). Each program owns two output
rows and walks K in 2048-wide tiles, without tensor cores and without padding the token to 16
rows as `quant_matmul` does; its weight loads are marked evict-first so the input stays cached.
At 4 tokens the same tiles were 0.70× of cuBLAS, so only one token comes here.

`qgemv` does the same for the packed weight-only kinds of `quant.packed` (int8 and fp8 per
channel, int4 by groups): at one token `quant_matmul`'s tensor-core tiles pad the token to 16
rows. Integers become floats by the exponent trick (OR into the mantissa of 2^23, subtract),
not the converter, which runs at a quarter of the FMA rate. An int4 group's zero point is
applied once per group through the sum of its inputs: Σ s·(q−z)·x = s·(Σ q·x − z·Σ x).
A 7B decode step's matmuls at one token on the H100 (`bench_matmul.py --sweep-gemv`, 7 tiles):
fp8 2.47 ms against `quant_matmul`'s 2.88, int4-g128 2.78 against 3.05 (tile 8×1024, 2 warps),
but int8 3.03 at best against 2.94, so int8 stays with `quant_matmul` (`SERVED`).
"""

from __future__ import annotations

import torch

try:  # the CPU-only install has no triton; the CUDA path needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None

BLOCK_N, BLOCK_K, WARPS = 2, 2048, 4  # the sweep's best tile for every 7B shape at one token
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """One row of input on CUDA, and a weight of the input's dtype."""
    return (triton is not None and x.is_cuda and x.numel() == x.shape[-1] and weight.dtype == x.dtype
            and x.dtype in DTYPES and weight.is_contiguous())


if triton is not None:

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, y_ptr, N, K, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        n_ok = rn < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + rk
            k_ok = k < K
            w = tl.load(w_ptr + rn[:, None] * stride_wn + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0,
                        eviction_policy="evict_first")
            x = tl.load(x_ptr + k, mask=k_ok, other=0.0)
            acc += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
        tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


if triton is not None:

    @triton.jit
    def _exact_float(v):
        """Integers 0..2^23 as fp32 without the int-to-float converter: 0x4B000000 | v is the fp32
        number 2^23 + v."""
        return (v.to(tl.uint32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0

    @triton.jit
    def _qgemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, y_ptr, N, K, stride_qn, stride_sn, KIND: tl.constexpr,
                      GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if KIND == 2:  # int4: per group of GROUP, the first half in the low nibbles, the second in the high
            HALF: tl.constexpr = GROUP // 2
            GROUPS: tl.constexpr = BLOCK_K // GROUP
            c = tl.arange(0, BLOCK_K // 2)
            c_group, c_pos = c // HALF, c % HALF
            r = tl.arange(0, GROUPS)
            for g0 in range(0, K // GROUP, GROUPS):
                c_ok = (g0 + c_group) < K // GROUP
                r_ok = (g0 + r) < K // GROUP
                packed = tl.load(q_ptr + rn[:, None] * stride_qn + (g0 * HALF + c)[None, :],
                                 mask=n_ok[:, None] & c_ok[None, :], other=0, eviction_policy="evict_first")
                k_low = (g0 + c_group) * GROUP + c_pos
                x_low = tl.load(x_ptr + k_low, mask=c_ok, other=0.0).to(tl.float32)
                x_high = tl.load(x_ptr + k_low + HALF, mask=c_ok, other=0.0).to(tl.float32)
                qx = _exact_float(packed & 15) * x_low[None, :] + _exact_float(packed >> 4) * x_high[None, :]
                qx_g = tl.sum(tl.reshape(qx, (BLOCK_N, GROUPS, HALF)), axis=2)
                x_g = tl.sum(tl.reshape(x_low + x_high, (GROUPS, HALF)), axis=1)
                sz_at = rn[:, None] * stride_sn + (g0 + r)[None, :]
                sz_ok = n_ok[:, None] & r_ok[None, :]
                scale = tl.load(s_ptr + sz_at, mask=sz_ok, other=0.0).to(tl.float32)
                zero = _exact_float(tl.load(z_ptr + sz_at, mask=sz_ok, other=0))
                acc += tl.sum(scale * (qx_g - zero * x_g[None, :]), axis=1)
        else:
            rk = tl.arange(0, BLOCK_K)
            for k0 in range(0, K, BLOCK_K):
                k = k0 + rk
                k_ok = k < K
                q = tl.load(q_ptr + rn[:, None] * stride_qn + k[None, :], mask=n_ok[:, None] & k_ok[None, :],
                            other=0.0, eviction_policy="evict_first")
                if KIND == 1:  # int8 -> 0..255 exactly, minus the offset
                    w = _exact_float((q.to(tl.int16) + 128).to(tl.uint8)) - 128.0
                else:  # fp8
                    w = q.to(tl.float32)
                x = tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
                acc += tl.sum(w * x[None, :], axis=1)
            acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + rn, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


QKINDS = {"int8": 1, "int4": 2, "fp8": 3}
Q_TILES = {"int8": (4, 2048, 4), "fp8": (4, 2048, 4), "int4": (8, 1024, 2)}  # BLOCK_N, BLOCK_K (weights), warps
SERVED = ("fp8", "int4")  # int8 stays with quant_matmul's tiles, which were faster at one token


def qapplies(x: torch.Tensor, kind: str, act: str, group: int) -> bool:
    """One row of 16-bit or fp32 input on CUDA, a weight-only kind, int4 groups a tile holds whole."""
    return (triton is not None and x.is_cuda and x.numel() == x.shape[-1] and x.dtype in DTYPES
            and kind in SERVED and act == "none" and (kind != "int4" or group <= Q_TILES["int4"][1]))


def qgemv(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, kind: str,
          group: int = 0, tile: tuple[int, int, int] | None = None) -> torch.Tensor:
    """x [..., K] holding one row times the packed [N, K] weight of `kind` -> [..., N] in x's
    dtype (`qapplies` must hold). `tile`: (BLOCK_N, BLOCK_K, warps), for sweeps."""
    n, k = q.shape[0], x.shape[-1]
    block_n, block_k, warps = tile or Q_TILES[kind]
    row = x.reshape(k).contiguous()
    y = torch.empty(n, device=x.device, dtype=x.dtype)
    _qgemv_kernel[(triton.cdiv(n, block_n),)](row, q, scale, zero if zero is not None else scale, y, n, k, q.stride(0),
                                              scale.stride(0), KIND=QKINDS[kind], GROUP=group if kind == "int4" else 0,
                                              BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps)
    return y.reshape(*x.shape[:-1], n)


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] holding one row, weight [N, K] -> [..., N] in x's dtype (`applies` must hold)."""
    n, k = weight.shape
    row = x.reshape(k).contiguous()
    y = torch.empty(n, device=x.device, dtype=x.dtype)
    _gemv_kernel[(triton.cdiv(n, BLOCK_N),)](row, weight, y, n, k, weight.stride(0), BLOCK_N=BLOCK_N,
                                              BLOCK_K=BLOCK_K, num_warps=WARPS)
    return y.reshape(*x.shape[:-1], n)
