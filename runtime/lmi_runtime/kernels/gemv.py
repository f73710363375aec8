"""`y = x @ W.T` for one token and a 16-bit or fp32 weight, on CUDA cores: the decode step of
a single stream.

Why not cuBLAS: at one token a matmul only streams its weight, and cuBLAS's kernels read it at
2.2-2.8 TB/s on the H100, while this one reads 2.6-3.1 (`torch.sum` reads 3.07 there). A 7B
decode step's matmuls took 4.59 ms against cuBLAS's 5.03 (1.10×; a sweep over tiles on the
H100, CUDA graphs over weight copies that defeat the L2 cache). Each program owns two output
rows and walks K in 2048-wide tiles, without tensor cores and without padding the token to 16
rows as `quant_matmul` does; its weight loads are marked evict-first so the input stays cached.
At 4 tokens the same tiles were 0.70× of cuBLAS, so only one token comes here.
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


def gemv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] holding one row, weight [N, K] -> [..., N] in x's dtype (`applies` must hold)."""
    n, k = weight.shape
    row = x.reshape(k).contiguous()
    y = torch.empty(n, device=x.device, dtype=x.dtype)
    _gemv_kernel[(triton.cdiv(n, BLOCK_N),)](row, weight, y, n, k, weight.stride(0), BLOCK_N=BLOCK_N,
                                              BLOCK_K=BLOCK_K, num_warps=WARPS)
    return y.reshape(*x.shape[:-1], n)
