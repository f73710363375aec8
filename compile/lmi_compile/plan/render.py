"""Print a plan: a table of decisions for people, a stable JSON document for machines."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from lmi_compile.plan.estimate import Estimates, minutes
from lmi_compile.plan.planner import Plan
from lmi_runtime.hardware import GiB


def plan_json(plan: Plan) -> str:
    return json.dumps(plan.model_dump(mode="json"), indent=2)


def print_plan(plan: Plan, console: Console) -> None:
    model = plan.model
    console.print(f"[bold]Plan[/] for {model.source} ({model.architecture or model.model_type}, "
                  f"{plan.weights.parameters / 1e9:.2f} B parameters)", highlight=False)
    table = Table(show_lines=False)
    table.add_column("decision", style="bold")
    table.add_column("value", style="cyan")
    table.add_column("reason")
    for item in plan.reasons:
        table.add_row(item.decision, item.value, item.reason)
    console.print(table)
    kv = plan.kv_cache
    console.print(
        f"KV cache: {kv.tokens:,} tokens ({kv.bytes_per_device / GiB:.2f} GiB per device, "
        f"{kv.bytes_per_token:,} B per token per device); {kv.max_full_sequences} sequences of "
        f"{plan.max_total_len} tokens at once.", highlight=False)
    console.print(f"[dim]formula: {kv.formula}[/]", highlight=False)
    if plan.estimates is not None:
        print_estimates(plan.estimates, console)


def print_estimates(estimates: Estimates, console: Console) -> None:
    """Each stage's time and peak memory, the sizes chosen for the device, and long-stage warnings."""
    table = Table(title=f"Estimated cost on {estimates.device}")
    for column in ("stage", "time", "peak memory", "based on"):
        table.add_column(column)
    for stage in estimates.stages:
        table.add_row(stage.stage, minutes(stage.seconds), f"{stage.peak_memory_bytes / GiB:.1f} GiB", stage.basis)
    table.add_row("total", minutes(estimates.total_seconds), "", "")
    console.print(table)
    if estimates.sizes:
        chosen = ", ".join(f"{size.setting}={size.value}" for size in estimates.sizes)
        console.print(f"sized for {estimates.device} (set them in the recipe to override): {chosen}; "
                      f"why: {estimates.sizes[0].reason}", highlight=False, soft_wrap=True)
    for warning in estimates.warnings():
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
