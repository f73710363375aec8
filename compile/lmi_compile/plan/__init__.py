"""Planning: backend, TP degree, dtype, limits and KV-cache budget for a model on given hardware."""

from lmi_compile.plan.memory import FORMULA, KvCachePlan, kv_cache_plan
from lmi_compile.plan.model_config import read_model_config
from lmi_compile.plan.planner import Decision, Plan, make_plan, plan_recipe
from lmi_compile.plan.render import plan_json, print_plan

__all__ = ["FORMULA", "Decision", "KvCachePlan", "Plan", "kv_cache_plan", "make_plan", "plan_json", "plan_recipe",
           "print_plan", "read_model_config"]
