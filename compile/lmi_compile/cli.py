"""`lmi-compile`: run a recipe, or one stage of it, from the command line."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lmi-compile",
    help="Prepare LLM artifacts ahead of time: plan, fetch, quantize, compile, publish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keeps `lmi-compile COMMAND` a command group even while only one command is registered."""


# Each command lives in lmi_compile.commands.<name> and registers itself on `app`.
from lmi_compile.commands import register_all  # noqa: E402

register_all(app)


def main() -> None:
    app()
