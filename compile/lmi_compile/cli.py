"""`lmi-compile`: run a recipe, or one stage of it, from the command line."""

from __future__ import annotations

import typer

from lmi_runtime.cli_support import DEBUG_HELP, set_debug

app = typer.Typer(
    name="lmi-compile",
    help="Prepare LLM artifacts ahead of time: plan, fetch, quantize, compile, publish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP)) -> None:
    """Global options (`lmi-compile --debug COMMAND`); also keeps `lmi-compile COMMAND` a group."""
    set_debug(debug)


# Each command lives in lmi_compile.commands.<name> and registers itself on `app`.
from lmi_compile.commands import register_all  # noqa: E402

register_all(app)


def main() -> None:
    app()
