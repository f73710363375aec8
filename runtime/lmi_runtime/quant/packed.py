"""Quantized weights of one linear layer, in the layout our matmul kernels read.

Why a layout of our own rather than compressed-tensors' as stored: its int4 `pack-quantized`
format packs eight values into an int32 and its zero points along the output dimension,
which no kernel reads directly; converting once (ahead of time in the compile stage, or at load)
lets every kernel read bytes in the order it walks them.

| kind | `q`                                   | `scale`          | `zero`                      |
|------|---------------------------------------|------------------|-----------------------------|
| int8 | int8 [N, K]                           | [N] per channel  | —                           |
| fp8  | float8_e4m3fn [N, K]                  | [N] per channel  | —                           |
| int4 | uint8 [N, K/2], values 0..15, see below | [N, K/group] | uint8 [N, K/group], 0..15 |

int4 packs each group's first half in the low nibbles and its second half in the high ones
(byte j of a group holds k = j and k = j + group/2), so the kernel multiplies each nibble
plane by a contiguous slice of the input: with k even/odd in the nibbles it had to read the
input with stride 2, and ran at half the speed of fp16.

A weight is `(q - zero) * scale` (zero 0 for int8/fp8; symmetric int4 stores zero 8).
`act` says how the layer's input is quantized, dynamically per token, as the checkpoint was
calibrated: `none` (weight-only), `int8` (SmoothQuant W8A8) or `fp8` (W8A8 fp8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

KINDS = ("int8", "fp8", "int4")
ACTS = ("none", "int8", "fp8")
FP8 = torch.float8_e4m3fn


@dataclass
class PackedWeight:
    kind: str
    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None = None
    group_size: int = 0  # int4 only
    act: str = "none"

    def __post_init__(self):
        if self.kind not in KINDS or self.act not in ACTS:
            raise ValueError(f"unknown quantized layout kind={self.kind!r} act={self.act!r}")

    def args(self) -> tuple:
        """The op's arguments: tensors and constants only, so one compiled graph serves every
        layer (torch.compile guards on the constants, which all layers share)."""
        return (self.q, self.scale, self.zero, self.kind, self.act, self.group_size)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"q": self.q, "scale": self.scale}
        return out if self.zero is None else {**out, "zero": self.zero}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


def pack_int4(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] integers 0..15 -> uint8 [N, K/2]: per group, the first half low, the second high."""
    v = values.to(torch.uint8).reshape(values.shape[0], -1, 2, group_size // 2)
    return (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(values.shape[0], -1)


def unpack_int4(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    """uint8 [N, K/2] -> uint8 [N, K] values 0..15."""
    p = packed.reshape(packed.shape[0], -1, 1, group_size // 2)
    return torch.cat((p & 15, p >> 4), dim=2).reshape(packed.shape[0], -1)


def dequantize(w: PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The dense weight [N, K] in `dtype` (the reference every kernel is checked against)."""
    if w.kind == "int4":
        q = unpack_int4(w.q, w.group_size).float()
        z = w.zero.float().repeat_interleave(w.group_size, dim=1)
        s = w.scale.float().repeat_interleave(w.group_size, dim=1)
        return ((q - z) * s).to(dtype)
    return (w.q.float() * w.scale.float().unsqueeze(1)).to(dtype)


def quantize_activations(x: torch.Tensor, act: str) -> torch.Tensor:
    """Fake-quantize the input per token as compressed-tensors' dynamic symmetric schemes do
    (scale = amax / (range / 2)), returned in x's dtype."""
    if act == "none":
        return x
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    if act == "int8":
        scale = (amax / 127.5).clamp(min=1e-12)
        return ((x.float() / scale).round().clamp(-128, 127) * scale).to(x.dtype)
    scale = (amax / torch.finfo(FP8).max).clamp(min=1e-12)
    return ((x.float() / scale).clamp(-448, 448).to(FP8).float() * scale).to(x.dtype)


def pack(dense: torch.Tensor, kind: str, scale: torch.Tensor, zero: torch.Tensor | None = None,
         group_size: int = 0, act: str = "none") -> PackedWeight:
    """Requantize a dequantized weight with the scales (and zero points) it was quantized
    with: exact, since each value sits on the grid up to rounding far below half a step.
    `zero` for int4 is in the signed domain of compressed-tensors (None: symmetric)."""
    w = dense.float()
    if kind == "int4":
        s = scale.float().repeat_interleave(group_size, dim=1)
        z = torch.zeros_like(scale, dtype=torch.float32) if zero is None else zero.float()
        q = (w / s).round() + z.repeat_interleave(group_size, dim=1) + 8  # signed -> 0..15
        return PackedWeight("int4", pack_int4(q.clamp(0, 15), group_size), scale, (z + 8).to(torch.uint8), group_size, act)
    s = scale.float().reshape(-1, 1)
    if kind == "int8":
        q = (w / s).round().clamp(-128, 127).to(torch.int8)
    else:
        q = (w / s).clamp(-448, 448).to(FP8)
    return PackedWeight(kind, q, scale.reshape(-1), None, 0, act)


def quantize_rtn(dense: torch.Tensor, kind: str, group_size: int = 128, act: str = "none") -> PackedWeight:
    """Round-to-nearest quantization (asymmetric groups for int4, symmetric per channel for
    int8/fp8): for benchmarks on random weights and for tests; real checkpoints come from
    the quantize stage and go through `pack`."""
    w = dense.float()
    if kind == "int4":
        g = w.reshape(w.shape[0], -1, group_size)
        lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        zero = (-8 - lo / scale).round().clamp(-8, 7)
        return pack(dense, "int4", scale.to(dense.dtype), zero, group_size, act)
    top = 127.0 if kind == "int8" else torch.finfo(FP8).max
    scale = (w.abs().amax(1) / top).clamp(min=1e-8)
    return pack(dense, kind, scale.to(dense.dtype), act=act)


def concat(weights: list[PackedWeight]) -> PackedWeight:
    """One weight whose outputs are the concatenation of `weights`' (fused q/k/v, gate/up)."""
    first = weights[0]
    if any((w.kind, w.group_size, w.act) != (first.kind, first.group_size, first.act) for w in weights):
        raise ValueError("cannot fuse layers quantized differently")
    zero = None if first.zero is None else torch.cat([w.zero for w in weights])
    return PackedWeight(first.kind, torch.cat([w.q for w in weights]), torch.cat([w.scale for w in weights]), zero,
                        first.group_size, first.act)
