"""Quantize a 16-bit checkpoint's projections at load, round-to-nearest per output channel:
`OPTION_QUANTIZE=fp8` (or `static_int8`, `--quantize`) on a model that was not prepared, as
LMI's and vLLM's `quantize=fp8` do. Per-channel fp8 and int8 lose little without calibration
(QUANT-NOTES.md: +0.1% perplexity for int8 on SmolLM2); the calibrated methods (awq, gptq,
smoothquant) need the quantize stage. Weight-only: activations stay 16-bit, which the decode
kernel reads anyway. Also how the benchmark gets quantized 7B-shaped models."""

from __future__ import annotations

import logging

from torch import nn

from lmi_runtime.errors import ConfigError
from lmi_runtime.quant.linear import QuantLinear
from lmi_runtime.quant.packed import dequantize, quantize_rtn

log = logging.getLogger("lmi_runtime.quant")
PROJECTIONS = (("self_attn", "qkv_proj"), ("self_attn", "o_proj"), ("mlp", "gate_up_proj"), ("mlp", "down_proj"))
AT_LOAD = {"fp8": "fp8", "static_int8": "int8"}  # option.quantize -> packed kind


def kind_at_load(method: str) -> str | None:
    """The packed kind `option.quantize` asks for on a 16-bit checkpoint (None: nothing to do)."""
    if method == "none":
        return None
    if method not in AT_LOAD:
        raise ConfigError(f"quantize={method} needs calibration data, which lmi-serve does not run at load",
                          hint=f"prepare the model with lmi-compile (quantize.method: {method}), "
                               f"or serve with OPTION_QUANTIZE={' or '.join(AT_LOAD)}")
    return AT_LOAD[method]


def quantize_layers(layers: nn.ModuleList, kind: str, group_size: int = 128, packed: bool = True) -> int:
    """Quantize every decoder layer's (fused) projections; the embeddings and the output head
    stay 16-bit, as in the quantize stage. `packed=False` (CPU, where dense matmuls are faster)
    keeps the rounded weights dense. Returns the number of layers quantized."""
    count = 0
    for layer in layers:
        for block, name in PROJECTIONS:
            parent = getattr(layer, block)
            dense = getattr(parent, name)
            weight = quantize_rtn(dense.weight.data, kind, group_size)
            if packed:
                setattr(parent, name, QuantLinear(weight, dense.bias))
            else:
                dense.weight.data = dequantize(weight, dense.weight.dtype)
            count += 1
    return count
