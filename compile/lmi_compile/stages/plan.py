"""plan: recipe → Plan, with the combinations no target can build refused before any download."""

from __future__ import annotations

from lmi_compile.plan import Plan, plan_recipe
from lmi_compile.plan.backend import refuse_fp8_without_fp8_cores
from lmi_compile.recipe import Recipe
from lmi_compile.targets import vendor_stage
from lmi_runtime.backends.vendor import VENDOR_TARGETS


def checked_plan(recipe: Recipe, *, instance_type: str | None = None, token: str | None = None,
                 device: str | None = None) -> Plan:
    plan = plan_recipe(recipe, instance_type=instance_type, token=token, device=device)
    refuse_unbuildable(recipe, plan)
    return plan


def refuse_unbuildable(recipe: Recipe, plan: Plan) -> None:
    """A ConfigError (or MissingExtraError) for a plan no target here can build."""
    if plan.backend in VENDOR_TARGETS:
        vendor_stage.check(recipe, plan)
    elif plan.quantization == "fp8":  # the torch target: llm-compressor's fp8, served on FP8 tensor cores
        refuse_fp8_without_fp8_cores(plan.hardware)
    if recipe.target.kernel_cache:
        from lmi_compile.stages.kernel_cache import refuse_unbuildable_here

        refuse_unbuildable_here(plan.backend, plan.tp_degree, plan.hardware)
