"""plan: recipe → Plan, with the combinations no target can build refused before any download."""

from __future__ import annotations

from lmi_compile.plan import Plan, plan_recipe
from lmi_compile.recipe import Recipe
from lmi_compile.targets import vendor_stage
from lmi_runtime.backends.vendor import VENDOR_TARGETS
from lmi_runtime.errors import ConfigError


def checked_plan(recipe: Recipe, *, instance_type: str | None = None, token: str | None = None,
                 device: str | None = None) -> Plan:
    plan = plan_recipe(recipe, instance_type=instance_type, token=token, device=device)
    refuse_unbuildable(recipe, plan)
    return plan


def refuse_unbuildable(recipe: Recipe, plan: Plan) -> None:
    """A ConfigError (or MissingExtraError) for a plan no target here can build."""
    if plan.backend in VENDOR_TARGETS:
        vendor_stage.check(recipe, plan)
    elif plan.quantization == "fp8":
        raise ConfigError("fp8 is produced by ModelOpt for the trtllm target; the plan chose the torch target",
                          hint="set target.backend: trtllm, or quantize.method awq / smoothquant / static_int8")
