"""Tensor-parallel degree: which degrees a model allows, and which one to use."""

from __future__ import annotations

from collections.abc import Callable

from lmi_compile.plan.modelspec import ModelSpec
from lmi_runtime.backends.tp_sharding import valid_degrees
from lmi_runtime.errors import ConfigError


def valid_tp_degrees(spec: ModelSpec, limit: int) -> list[int]:
    """Degrees ≤ limit that split the model (`lmi_runtime.backends.tp_sharding.valid_degrees`)."""
    return valid_degrees(spec.num_heads, spec.num_kv_heads, spec.intermediate_size, limit)


def heads_text(spec: ModelSpec) -> str:
    return f"{spec.num_heads} attention heads and {spec.num_kv_heads} KV heads, MLP width {spec.intermediate_size}"


def choose_tp(requested: int | str, spec: ModelSpec, units: int, unit_name: str,
              fits: Callable[[int], bool]) -> tuple[int, int | None, str]:
    """(tp, smallest tp at which the model fits or None, reason)."""
    valid = valid_tp_degrees(spec, units)
    smallest = next((t for t in valid if fits(t)), None)
    fit_note = (f"; the model fits from TP {smallest}" if smallest else "")
    if requested == "max":
        tp = valid[-1]
        idle = f", leaving {units - tp} of {units} {unit_name} idle" if tp < units else ""
        return tp, smallest, (f"max: the largest degree ≤ {units} {unit_name} that divides {heads_text(spec)}"
                              f"{idle} (valid: {', '.join(map(str, valid))}){fit_note}")
    tp = int(requested)
    if tp > units:
        raise ConfigError(f"tensor parallel degree {tp} needs {tp} {unit_name}; the hardware has {units}",
                          hint=f"use one of {', '.join(map(str, valid))} (or 'max'), or plan for a larger instance with --for")
    if tp not in valid:
        raise ConfigError(
            f"tensor parallel degree {tp} does not divide the model's {heads_text(spec)}",
            hint=f"valid degrees on this hardware: {', '.join(map(str, valid))} (or 'max' for {valid[-1]})",
        )
    return tp, smallest, f"requested{fit_note}"
