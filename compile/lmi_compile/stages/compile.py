"""compile: a model folder (quantized for the torch target) → the planned target's files.

torch: per-rank safetensors shards; trtllm / neuron: the vendor build (which quantizes with the
vendor's own tool when the recipe asks). `compile_settings` is everything the output depends on
besides the input folder: the stage cache's key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from lmi_compile.plan import Plan
from lmi_compile.recipe import Recipe
from lmi_compile.targets import torch_target, vendor_stage
from lmi_runtime.artifact.manifest import TargetInfo
from lmi_runtime.quant import prepacked
from lmi_runtime.backends.vendor import VENDOR_TARGETS

Log = Callable[[str], None]


def compile_model(recipe: Recipe, plan: Plan, model_dir: Path, out: Path, log: Log = print) -> TargetInfo:
    """Build the target's files into `out`; return what the manifest records about the target."""
    if plan.backend in VENDOR_TARGETS:
        vendor_stage.build(recipe, plan, model_dir, out, log)
    else:
        torch_target.build(model_dir, out, tp_degree=plan.tp_degree, log=log)
    return target_info(recipe, plan, out)


def target_info(recipe: Recipe, plan: Plan, compiled: Path | None = None) -> TargetInfo:
    """`compiled`: the stage's output, which says whether the torch target pre-packed the weights."""
    if plan.backend in VENDOR_TARGETS:
        return vendor_stage.target_info(recipe, plan)
    return torch_target.describe(plan.tp_degree, plan.dtype, compiled)


def compile_settings(recipe: Recipe, plan: Plan) -> dict:
    if plan.backend in VENDOR_TARGETS:
        return vendor_stage.settings(recipe, plan)
    return {"backend": plan.backend, "tp_degree": plan.tp_degree, "dtype": plan.dtype,
            "weights_layout": prepacked.LAYOUT}
