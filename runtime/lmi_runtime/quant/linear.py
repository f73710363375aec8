"""The model's matmul: `linear(x, weight, bias)` for a dense weight or a quantized one.

Quantized weights go through one custom op, `lmi::qlinear`, so `torch.compile` treats the
Triton kernel as a single opaque call inside the compiled layer (fusing the norms and
activations around it) and CUDA graphs capture it like any kernel. On CUDA it runs
`kernels.quant_matmul`, at one token of a weight-only layer the GEMV `kernels.gemv.qgemv`, and
above `KERNEL_MAX_TOKENS` cuBLAS over the weight `kernels.dequant` unpacks; on the CPU it
dequantizes and calls `F.linear` (the reference). Dense weights on CUDA go through
`lmi::dense_linear`: one token to the GEMV of `kernels.gemv` (faster than cuBLAS there), more to
cuBLAS (our tiled kernel read them no faster: 3.59 vs 3.62 ms for a 7B decode step's matmuls on
the H200, `scripts/bench_matmul.py`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmi_runtime.kernels import dequant, gemv, quant_matmul
from lmi_runtime.quant.packed import PackedWeight, dequantize, quantize_activations


# Above this many tokens (prefill) the weight is dequantized (`kernels.dequant`) and cuBLAS does the work:
# the fused kernel would dequantize every weight tile once per 64 tokens, and prefill is
# compute-bound (64 concurrent 128-token prompts ran at a third of fp16's speed that way).
KERNEL_MAX_TOKENS = 64


@torch.library.custom_op("lmi::qlinear", mutates_args=())
def qlinear(x: torch.Tensor, q: torch.Tensor, scale: Optional[torch.Tensor], zero: Optional[torch.Tensor],
            kind: str, act: str, group: int) -> torch.Tensor:
    if gemv.qapplies(x, q, kind, act, group):  # one token of a weight-only layer
        return gemv.qgemv(x, q, scale, zero, kind, group)
    rows = quantize_activations(x.reshape(-1, x.shape[-1]), act)
    if rows.is_cuda and quant_matmul.triton is not None and rows.shape[0] <= KERNEL_MAX_TOKENS:
        y = quant_matmul.matmul(rows.contiguous(), q, scale, zero, kind, group)
    else:
        packed = PackedWeight(kind, q, scale, zero, group, act)
        y = F.linear(rows, dequant.dense(packed, x.dtype) if dequant.applies(packed) else dequantize(packed, x.dtype))
    return y.reshape(*x.shape[:-1], q.shape[0])


@qlinear.register_fake
def _(x, q, scale, zero, kind, act, group):
    return x.new_empty((*x.shape[:-1], q.shape[0]))


@torch.library.custom_op("lmi::dense_linear", mutates_args=())
def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return gemv.gemv(x, weight) if gemv.applies(x, weight) else F.linear(x, weight)


@dense_linear.register_fake
def _(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def linear(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`weight`: a dense [N, K] tensor, or a quantized layer's `QuantLinear.args()`."""
    dense = isinstance(weight, torch.Tensor)
    if dense and not x.is_cuda:
        return F.linear(x, weight, bias)
    y = dense_linear(x, weight) if dense else qlinear(x, *weight)
    return y if bias is None else y + bias


class QuantLinear(nn.Module):
    """A linear layer holding a `PackedWeight` (as buffers, so `.to()` moves them)."""

    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.kind, self.act, self.group_size = weight.kind, weight.act, weight.group_size
        self.q = nn.Buffer(weight.q)
        self.scale = nn.Buffer(weight.scale)
        self.zero = nn.Buffer(weight.zero) if weight.zero is not None else None
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    def packed(self) -> PackedWeight:
        return PackedWeight(self.kind, self.q, self.scale, self.zero, self.group_size, self.act)

    def args(self) -> tuple:
        return self.packed().args()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.args(), self.bias)
