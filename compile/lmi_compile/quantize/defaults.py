"""Calibration and evaluation sizes that fit the device the quantize stage runs on.

The papers' settings (AWQ: 128 samples of 512 tokens and a 20-point scale grid) take minutes on
a GPU but over an hour on a 2-core CPU, so a recipe that leaves a size unset gets the one for its
device; every value a recipe sets is kept. The plan states each chosen value with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmi_compile.recipe import QuantizeSpec


@dataclass(frozen=True)
class DeviceSizes:
    num_samples: int
    seq_len: int
    awq_grid: int
    eval_tokens: int
    eval_batch_size: int
    why: str


CPU = DeviceSizes(
    num_samples=16, seq_len=256, awq_grid=10, eval_tokens=2048, eval_batch_size=1,
    why="CPU: a small calibration set keeps AWQ/GPTQ within minutes on a few cores "
    "(the papers' 128 x 512 tokens take over an hour on 2 cores)",
)
GPU = DeviceSizes(
    num_samples=128, seq_len=512, awq_grid=20, eval_tokens=16384, eval_batch_size=8,
    why="GPU: the AWQ paper's calibration (128 x 512 tokens, 20-point scale grid)",
)

# (recipe key, section, field, DeviceSizes attribute, the methods it applies to)
CALIBRATED = ("awq", "gptq", "smoothquant")
EVALUATED = ("awq", "gptq", "smoothquant", "static_int8", "fp8")
SIZES = (
    ("calibration.num_samples", "calibration", "num_samples", "num_samples", CALIBRATED),
    ("calibration.seq_len", "calibration", "seq_len", "seq_len", CALIBRATED),
    ("awq_grid", None, "awq_grid", "awq_grid", ("awq",)),
    ("quality.max_tokens", "quality", "max_tokens", "eval_tokens", EVALUATED),
    ("quality.batch_size", "quality", "batch_size", "eval_batch_size", EVALUATED),
)


def for_device(device: str) -> DeviceSizes:
    return GPU if device.startswith("cuda") else CPU


def resolve(spec: QuantizeSpec, device: str) -> tuple[QuantizeSpec, dict[str, str]]:
    """`spec` with every unset size filled in for `device`, and {recipe key: value} for each one
    chosen here that the method uses (values the recipe set are neither changed nor listed)."""
    sizes = for_device(device)
    chosen: dict[str, str] = {}
    updates: dict = {}
    for key, section, name, attr, methods in SIZES:
        holder = getattr(spec, section) if section else spec
        if getattr(holder, name) is not None:
            continue
        value = getattr(sizes, attr)
        if spec.method in methods:
            chosen[key] = str(value)
        if section:
            updates.setdefault(section, {})[name] = value
        else:
            updates[name] = value
    for section in ("calibration", "quality"):
        if section in updates:
            updates[section] = getattr(spec, section).model_copy(update=updates[section])
    return spec.model_copy(update=updates), chosen
