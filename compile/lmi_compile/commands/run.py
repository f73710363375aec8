"""`lmi-compile run`: the whole pipeline for one recipe (or the LMI configuration)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from lmi_compile.commands.common import printed_warnings, recipe_and_token
from lmi_runtime.cli_support import user_errors


def register(app: typer.Typer) -> None:
    app.command("run")(run)


@user_errors
def run(
    recipe: Path | None = typer.Argument(None, help="Recipe YAML file; omit to use LMI environment variables.",
                                         show_default=False),
    properties: Path | None = typer.Option(None, "--properties", help="serving.properties file, used without RECIPE."),
    out: str | None = typer.Option(None, "--out", help="Publish here instead of the recipe's output.uri (folder or s3://…)."),
    instance_type: str | None = typer.Option(None, "--for", help="Plan for this SageMaker instance type."),
    device: str = typer.Option("cpu", "--device", help="Device for quantization and its quality check (cpu or cuda)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan with each stage's estimated time and peak memory; run nothing."),
) -> None:
    """Plan, fetch, quantize (with its quality gate), compile and publish; the manifest is written last."""
    from lmi_compile.pipeline import run_recipe
    from lmi_runtime.storage.s3 import S3Options

    console = Console(stderr=True)
    with printed_warnings():
        chosen, token = recipe_and_token(recipe, properties)
        if out is not None:
            chosen.output.uri = out
        if dry_run:
            from lmi_compile.plan import plan_recipe, print_plan

            print_plan(plan_recipe(chosen, instance_type=instance_type, token=token, device=device), Console())
            return
        result = run_recipe(chosen, instance_type=instance_type, token=token, device=device,
                            s3_options=S3Options.from_env(), log=lambda line: console.print(f"[cyan]{line}[/]", soft_wrap=True))
    ref = result.artifact
    typer.echo(f"published {ref.uri} (manifest sha256 {ref.manifest_sha256[:16]}…, "
               f"{len(ref.sent)} files sent, {len(ref.skipped)} unchanged)")
