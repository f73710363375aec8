"""Group size versus layer shapes: checked before any calibration starts.

A group of `g` input columns shares one scale, so `g` must divide every quantized layer's
input width. Serving kernels (vLLM Marlin/Machete, TensorRT-LLM, AutoAWQ GEMM) take power-of-two
groups, so those are the only sizes offered: `auto` picks the largest one up to 128 that
divides every width (64 for SmolLM2, whose 576-wide projections refuse 128).

The one group-size rule: the quantizer applies it to the loaded model's layers, the planner
(weight bytes, the TensorRT-LLM AWQ block size) to the shapes in config.json
(`ModelSpec.quantized_widths`), so both pick the same size. Torch is imported only to read a
loaded model, so the planner stays free of it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import TYPE_CHECKING

from lmi_runtime.errors import ConfigError

if TYPE_CHECKING:
    import torch

MAX_AUTO_GROUP = 128
MIN_GROUP = 16
IGNORED = ("lm_head",)  # the output head stays in full precision, as in AutoAWQ/GPTQ checkpoints
GROUPED = {"awq", "gptq", "rtn"}  # methods whose weights are quantized in groups of columns


def quantized_widths(model: torch.nn.Module) -> dict[str, int]:
    """Input width of every Linear layer the methods quantize (all but the output head)."""
    import torch

    return {
        name: module.in_features
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in IGNORED
    }


def valid_group_sizes(widths: dict[str, int]) -> list[int]:
    sizes, g = [], MIN_GROUP
    while g <= max(widths.values()):
        if all(w % g == 0 for w in widths.values()):
            sizes.append(g)
        g *= 2
    return sizes


def auto_group_size(widths: dict[str, int]) -> int | None:
    """What `auto` picks: the largest valid size up to MAX_AUTO_GROUP; None when none fits."""
    fitting = [g for g in valid_group_sizes(widths) if g <= MAX_AUTO_GROUP]
    return fitting[-1] if fitting else None


def group_size_for(method: str, requested: int | str, widths: dict[str, int]) -> int | None:
    """The group size `method` uses on layers of these input widths: None for methods with one
    scale per output channel, else `resolve_group_size`."""
    return resolve_group_size(requested, widths) if method in GROUPED else None


def resolve_group_size(requested: int | str, widths: dict[str, int]) -> int:
    """The group size to use, or a ConfigError naming the layers it does not fit."""
    if not widths:
        raise ConfigError("the model has no Linear layers to quantize")
    valid = valid_group_sizes(widths)
    if requested == "auto":
        auto = auto_group_size(widths)
        if auto is None:
            raise ConfigError(
                f"no power-of-two group size from {MIN_GROUP} to {MAX_AUTO_GROUP} divides every layer width "
                f"({', '.join(str(w) for w in sorted(set(widths.values())))})",
                hint="quantize this model per channel (static_int8) instead",
            )
        return auto
    if not isinstance(requested, int) or requested <= 0:
        raise ConfigError(f"group size must be a positive integer or 'auto', got {requested!r}")
    misfits: dict[int, list[str]] = defaultdict(list)
    for name, width in widths.items():
        if width % requested:
            misfits[width].append(name)
    if misfits:
        described = "; ".join(
            f"width {width}: {_summarize(names)}" for width, names in sorted(misfits.items())
        )
        raise ConfigError(
            f"group size {requested} does not divide the input width of {sum(map(len, misfits.values()))} "
            f"layers ({described})",
            hint=f"valid group sizes for this model: {', '.join(map(str, valid)) or 'none'} "
            "(or group_size: auto)",
        )
    return requested


def _summarize(names: list[str]) -> str:
    """`model.layers.*.self_attn.q_proj, ... (120 layers)` instead of 120 full names."""
    patterns = sorted({re.sub(r"\.\d+\.", ".*.", n) for n in names})
    shown = ", ".join(patterns[:6]) + (", ..." if len(patterns) > 6 else "")
    return f"{shown} ({len(names)} layers)"
