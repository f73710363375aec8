"""A packed weight (`quant.packed`) to the dense [N, K] weight, in one pass on the GPU.

Why: above `quant.linear.KERNEL_MAX_TOKENS` tokens (prefill) the quantized layers multiply by
the dense weight with cuBLAS, since prefill is compute-bound. `packed.dequantize`, the reference,
takes several fp32 passes (unpack, two repeats of the group's scale and zero, subtract, multiply,
cast), about 1 ms for one 7B projection, so one 128-token prompt took 136 ms in int4 on the H100
against 20 ms in fp16. This kernel reads the packed bytes once and writes the dense weight once,
with the same fp32 arithmetic, so its result equals the reference bit for bit.
"""

from __future__ import annotations

import torch

from lmi_runtime.kernels.quant_matmul import supports_group
from lmi_runtime.quant.packed import PackedWeight

try:  # the CPU-only install has no triton; the CUDA path needs it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None

BLOCK_N, BLOCK_K = 32, 128  # int8 / fp8 tile; an int4 program takes BLOCK_N rows of one group


if triton is not None:

    @triton.jit
    def _dequant_kernel(q_ptr, s_ptr, z_ptr, out_ptr, N, K, stride_qn, stride_sn, INT4: tl.constexpr,
                        GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = rn < N
        if INT4:  # program 1 is the group: its first half in the low nibbles, the second in the high
            g = tl.program_id(1)
            half = tl.arange(0, GROUP // 2)
            b = tl.load(q_ptr + rn[:, None] * stride_qn + (g * (GROUP // 2) + half)[None, :], mask=n_ok[:, None], other=0)
            scale = tl.load(s_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)[:, None]
            zero = tl.load(z_ptr + rn * stride_sn + g, mask=n_ok, other=0).to(tl.float32)[:, None]
            at = out_ptr + rn[:, None] * K + (g * GROUP + half)[None, :]
            tl.store(at, (((b & 15).to(tl.float32) - zero) * scale).to(out_ptr.dtype.element_ty), mask=n_ok[:, None])
            tl.store(at + GROUP // 2, (((b >> 4).to(tl.float32) - zero) * scale).to(out_ptr.dtype.element_ty),
                     mask=n_ok[:, None])
        else:
            rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
            ok = n_ok[:, None] & (rk < K)[None, :]
            q = tl.load(q_ptr + rn[:, None] * stride_qn + rk[None, :], mask=ok).to(tl.float32)
            scale = tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
            tl.store(out_ptr + rn[:, None] * K + rk[None, :], (q * scale).to(out_ptr.dtype.element_ty), mask=ok)


def applies(w: PackedWeight) -> bool:
    """On CUDA with triton, and int4 groups the kernels take (powers of two: tl.arange)."""
    return triton is not None and w.q.is_cuda and (w.kind != "int4" or supports_group(w.group_size))


def dense(w: PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """`packed.dequantize(w, dtype)` in one kernel (`applies` must hold)."""
    int4 = w.kind == "int4"
    n, k = w.q.shape[0], w.q.shape[1] * (2 if int4 else 1)
    out = torch.empty(n, k, device=w.q.device, dtype=dtype)
    grid = (triton.cdiv(n, BLOCK_N), k // w.group_size if int4 else triton.cdiv(k, BLOCK_K))
    _dequant_kernel[grid](w.q, w.scale, w.zero if int4 else w.scale, out, n, k, w.q.stride(0),
                          w.scale.stride(0), INT4=int4, GROUP=w.group_size if int4 else 0,
                          BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out
