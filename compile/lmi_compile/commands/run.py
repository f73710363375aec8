"""`lmi-compile run`: the whole pipeline for one recipe (or the LMI configuration)."""

from __future__ import annotations

import typer
from rich.console import Console

from lmi_compile.commands.common import (DeviceOption, InstanceOption, PropertiesOption, RecipeArgument,
                                         printed_warnings, recipe_and_token, stage_logger)


def run(
    recipe: RecipeArgument = None,
    properties: PropertiesOption = None,
    out: str | None = typer.Option(None, "--out", help="Publish here instead of the recipe's output.uri (folder or s3://…)."),
    instance_type: InstanceOption = None,
    device: DeviceOption = "cpu",
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, each stage's estimate and what the stage cache already holds; run nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON instead of text."),
) -> None:
    """Plan, fetch, quantize (with its quality gate), compile and publish; the manifest is written last.
    Ends with a summary: artifact URI, sizes, quality, time per stage."""
    from lmi_compile.pipeline import run_recipe
    from lmi_runtime.storage.s3 import S3Options

    with printed_warnings():
        chosen, token = recipe_and_token(recipe, properties)
        if out is not None:
            chosen.output.uri = out
        if dry_run:
            _dry_run(chosen, instance_type, token, device, S3Options.from_env())
            return
        result = run_recipe(chosen, instance_type=instance_type, token=token, device=device,
                            s3_options=S3Options.from_env(), log=stage_logger())
    summary = result.summary()
    typer.echo(summary.model_dump_json(indent=1) if as_json else summary.text())


def _dry_run(recipe, instance_type: str | None, token: str | None, device: str, s3_options) -> None:
    """The plan, then the stages; a plan this machine cannot build is said, not raised, so that a
    GPU recipe can be dry-run on a workstation."""
    from lmi_compile.pipeline import preview_stages
    from lmi_compile.plan import plan_recipe, print_plan
    from lmi_compile.stages.plan import refuse_unbuildable
    from lmi_compile.summary import preview_text
    from lmi_runtime.errors import LmiError

    plan = plan_recipe(recipe, instance_type=instance_type, token=token, device=device)
    print_plan(plan, Console())
    try:
        refuse_unbuildable(recipe, plan)
    except LmiError as err:
        typer.echo(f"\nrun would stop before fetching: {err.message}" + (f" (hint: {err.hint})" if err.hint else ""))
    typer.echo("\nstages (nothing is run):\n" + preview_text(preview_stages(recipe, plan, device=device, s3_options=s3_options)))
