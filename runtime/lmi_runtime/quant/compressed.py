"""A compressed-tensors checkpoint (what `lmi-compile quantize` writes) read straight into
packed layers (`quant.packed`), without building the model in transformers.

Why read the stored integers rather than requantize transformers' dequantized weights: it is
exact by construction, needs no 16-bit copy of the model, and takes a fraction of the time.
The int32 packing is undone with compressed-tensors' own `unpack_from_int32`.

Supported (one scheme per config group, matched to layers by `targets`):
- int4 by groups (sizes the kernel tiles by: `quant_matmul.GROUP_SIZES`), symmetric or asymmetric, weight-only, `pack-quantized`
  (AWQ, GPTQ; GPTQ act-order only when its `g_idx` is the identity order);
- int8 per channel, symmetric, weight-only (`pack-quantized`, `int-quantized`, `naive-quantized`)
  or with dynamic per-token int8 activations (SmoothQuant W8A8);
- fp8 per channel with dynamic per-token fp8 activations, or weight-only (`float-quantized`).

Anything else raises `Unsupported` with the reason; the loader then serves the checkpoint
dequantized through transformers, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lmi_runtime.backends import staged_read
from lmi_runtime.kernels.quant_matmul import GROUP_SIZES, supports_group
from lmi_runtime.quant.packed import PackedWeight, dequantize, pack_int4

# A quantized layer's tensors besides its bias: anything else (static input scales, global
# scales, …) is a scheme this reader does not implement.
QUANT_SUFFIXES = ("weight", "weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")
INT_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")
FP8_FORMATS = ("float-quantized", "naive-quantized")


class Unsupported(Exception):
    """The checkpoint uses a scheme the packed layers do not cover (the message says which)."""


@dataclass(frozen=True)
class Scheme:
    kind: str  # int4 | int8 | fp8
    group_size: int
    act: str  # none | int8 | fp8
    format: str
    symmetric: bool


@dataclass
class Checkpoint:
    """Every quantized linear layer packed (by layer name, without `.weight`), the rest dense."""

    packed: dict[str, PackedWeight]
    dense: dict[str, torch.Tensor]

    def dense_state(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """A plain state dict: packed layers dequantized (the CPU path, and the reference)."""
        return {**self.dense, **{f"{name}.weight": dequantize(w, dtype) for name, w in self.packed.items()}}

    def summary(self) -> str:
        """E.g. `int4 g64 ×210`: the kinds of packed layers and how many of each."""
        counts: dict[str, int] = {}
        for w in self.packed.values():
            label = w.kind + (f" g{w.group_size}" if w.group_size else "") + ("" if w.act == "none" else f" act-{w.act}")
            counts[label] = counts.get(label, 0) + 1
        return ", ".join(f"{label} ×{n}" for label, n in sorted(counts.items()))


def _activation(args: dict | None) -> str:
    if not args:
        return "none"
    if not args.get("dynamic"):
        raise Unsupported("static activation scales (only dynamic per-token activations are packed)")
    found = {("int", 8): "int8", ("float", 8): "fp8"}.get((args.get("type"), args.get("num_bits")))
    if found is None or args.get("strategy") != "token" or not args.get("symmetric", True):
        raise Unsupported(f"activations quantized as {args.get('num_bits')}-bit {args.get('type')} "
                          f"by {args.get('strategy')} (only symmetric per-token int8/fp8)")
    return found


def scheme_of(group: dict, default_format: str | None) -> Scheme:
    """The packed scheme of one config group, or `Unsupported`."""
    fmt = group.get("format") or default_format or ""
    if group.get("output_activations"):
        raise Unsupported("quantized output activations")
    act = _activation(group.get("input_activations"))
    w = group.get("weights") or {}
    wtype, bits, strategy, sym = w.get("type"), w.get("num_bits"), w.get("strategy"), w.get("symmetric", True)
    if w.get("dynamic"):
        raise Unsupported("dynamically quantized weights")
    if (wtype, bits, strategy) == ("int", 4, "group") and act == "none" and fmt == "pack-quantized":
        size = w.get("group_size") or 0
        if not supports_group(size):
            raise Unsupported(f"int4 group size {size} (the kernel takes {GROUP_SIZES})")
        return Scheme("int4", size, act, fmt, bool(sym))
    if (wtype, bits, strategy) == ("int", 8, "channel") and sym and act in ("none", "int8") and fmt in INT_FORMATS:
        return Scheme("int8", 0, act, fmt, True)
    if (wtype, bits, strategy) == ("float", 8, "channel") and sym and act in ("none", "fp8") and fmt in FP8_FORMATS:
        return Scheme("fp8", 0, act, fmt, True)
    raise Unsupported(f"{bits}-bit {wtype} weights by {strategy} ({'symmetric' if sym else 'asymmetric'}, "
                      f"format {fmt}, activations {act})")


def _matches(target: str, layer: str) -> bool:
    """compressed-tensors' targets: `re:<pattern>`, a module class (`Linear`: every layer
    holding quantized weights here is one) or a layer name."""
    if target.startswith("re:"):
        return re.match(target[3:], layer) is not None
    return target == "Linear" or target == layer


def _layer_schemes(quant_config: dict, layers: Iterable[str]) -> dict[str, Scheme]:
    if quant_config.get("sparsity_config") or quant_config.get("transform_config"):
        raise Unsupported("sparsity or transforms in the checkpoint")
    groups = [(g.get("targets") or [], scheme_of(g, quant_config.get("format")))
              for g in (quant_config.get("config_groups") or {}).values()]
    found = {}
    for layer in layers:
        schemes = {s for targets, s in groups if any(_matches(t, layer) for t in targets)}
        if len(schemes) != 1:
            raise Unsupported(f"layer {layer} matches {len(schemes)} config groups' schemes")
        found[layer] = schemes.pop()
    return found


def read(paths: Iterable[Path], quant_config: dict, device: torch.device | str = "cpu",
         growing: Mapping[Path, staged_read.Growing] | None = None) -> Checkpoint:
    """Every quantized layer of the checkpoint in `paths` packed, on `device`; raise `Unsupported`
    when any layer's scheme is not covered (a whole-model fallback: never a partly-dense model),
    judged from the files' headers before any tensor is read (`growing`: files still downloading)."""
    paths = list(paths)
    names = [entry.name for path in paths for entry in staged_read.entries(path, (growing or {}).get(path))]
    layers = sorted(n.removesuffix(".weight_scale") for n in names if n.endswith(".weight_scale"))
    schemes = _layer_schemes(quant_config, layers)
    owned = {f"{layer}.{suffix}" for layer in layers for suffix in QUANT_SUFFIXES}
    for name in names:
        layer, _, suffix = name.rpartition(".")
        if layer in schemes and name not in owned and suffix != "bias":
            raise Unsupported(f"{name}: a tensor this reader does not interpret")
    tensors = staged_read.read_weights(paths, torch.device(device), growing)
    packed = {layer: _packed(tensors, layer, schemes[layer]) for layer in layers}
    return Checkpoint(packed, {name: tensors[name] for name in names if name not in owned})


def _packed(tensors: dict[str, torch.Tensor], layer: str, scheme: Scheme) -> PackedWeight:
    scale = tensors[f"{layer}.weight_scale"]
    if scheme.kind == "fp8":
        return PackedWeight("fp8", tensors[f"{layer}.weight"], scale.reshape(-1), act=scheme.act)
    if f"{layer}.weight_zero_point" in tensors and scheme.symmetric:
        if tensors[f"{layer}.weight_zero_point"].any():
            raise Unsupported(f"{layer}: a symmetric scheme with non-zero zero points")
    if scheme.kind == "int8":
        q = _unpacked(tensors, layer, 8) if scheme.format == "pack-quantized" else tensors[f"{layer}.weight"]
        return PackedWeight("int8", q.to(torch.int8), scale.reshape(-1), act=scheme.act)
    q = _unpacked(tensors, layer, 4)
    n, k = q.shape
    size = scheme.group_size
    if k % size or scale.shape != (n, k // size):
        raise Unsupported(f"{layer}: {k} input columns do not split into groups of {size}")
    _check_identity_order(tensors, layer, k, size)
    if scheme.symmetric:
        zero = torch.full((n, k // size), 8, dtype=torch.uint8)
    else:
        from compressed_tensors.compressors import unpack_from_int32

        signed = unpack_from_int32(tensors[f"{layer}.weight_zero_point"], 4, torch.Size((n, k // size)), packed_dim=0)
        zero = (signed.to(torch.int16) + 8).to(torch.uint8)
    return PackedWeight("int4", pack_int4((q.to(torch.int16) + 8).to(torch.uint8), size), scale, zero, size, scheme.act)


def _unpacked(tensors: dict[str, torch.Tensor], layer: str, bits: int) -> torch.Tensor:
    """Signed int8 [N, K] from compressed-tensors' int32 packing."""
    from compressed_tensors.compressors import unpack_from_int32

    shape = torch.Size(tensors[f"{layer}.weight_shape"].tolist())
    return unpack_from_int32(tensors[f"{layer}.weight_packed"], bits, shape)


def _check_identity_order(tensors: dict[str, torch.Tensor], layer: str, k: int, size: int) -> None:
    """GPTQ act-order stores each column's group (`g_idx`); only the plain order packs."""
    name = f"{layer}.weight_g_idx"
    if name in tensors and not torch.equal(tensors[name].long(), torch.arange(k) // size):
        raise Unsupported(f"{layer}: GPTQ act-order (g_idx is not the identity order)")
