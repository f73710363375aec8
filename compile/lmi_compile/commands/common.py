"""What several commands share: choosing the recipe (a file, or the LMI configuration) and
showing configuration warnings on stderr."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from rich.markup import escape

from lmi_compile.recipe import Recipe
from lmi_compile.recipe_loader import load_recipe, recipe_from_serving_config
from lmi_runtime.cli_support import stderr
from lmi_runtime.config import load_serving_config
from lmi_runtime.errors import ConfigError
from lmi_runtime.redact import redact

# Options several commands share, defined once.
RecipeArgument = Annotated[Path | None, typer.Argument(
    help="Recipe YAML file; omit to use LMI environment variables.", show_default=False)]
PropertiesOption = Annotated[Path | None, typer.Option(
    "--properties", help="serving.properties file (or a folder holding one), used without RECIPE.")]
InstanceOption = Annotated[str | None, typer.Option(
    "--for", help="Plan for this SageMaker instance type (e.g. ml.g5.12xlarge) instead of this machine.")]
DeviceOption = Annotated[str, typer.Option("--device", help="Device for quantization and its quality check (cpu or cuda).")]
RetryOption = Annotated[int | None, typer.Option("--retry-count", help="S3 retries per request (default 3, or LMI_S3_RETRY_COUNT)")]


@contextlib.contextmanager
def printed_warnings() -> Iterator[None]:
    """Collect warnings raised inside (unknown keys, overridden settings) and print them once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for item in caught:
                stderr.print(f"[yellow]warning:[/] {escape(redact(str(item.message)))}", highlight=False)


def recipe_and_token(recipe: Path | None, properties: Path | None) -> tuple[Recipe, str | None]:
    """The recipe from RECIPE, or from LMI environment variables + serving.properties; and the
    hub token (HF_TOKEN), which is never part of the recipe so that it is never written out."""
    token = os.environ.get("HF_TOKEN") or None
    if recipe is not None:
        if properties is not None:
            raise ConfigError(
                "give either a RECIPE or --properties, not both",
                hint="a recipe holds everything; --properties is for LMI-style configuration",
            )
        return load_recipe(recipe), token
    config = load_serving_config(properties=properties)
    if config.hf_token:
        token = config.hf_token.get_secret_value()
    return recipe_from_serving_config(config), token


def stage_logger() -> Callable[[str], None]:
    """One line per pipeline event on stderr: colour on a terminal, plain text in a log
    (rich drops its escape codes when stderr is not a terminal, e.g. in CloudWatch)."""
    from rich.console import Console

    console = Console(stderr=True)
    return lambda line: console.print(f"[cyan]{escape(line)}[/]", soft_wrap=True, highlight=False)
