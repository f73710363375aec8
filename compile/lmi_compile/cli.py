"""`lmi-compile`: run a recipe, or one stage of it, from the command line.

Every command is registered here, by name; a command raises, and `main` turns any failure into
one `error: …` / `hint: …` message and a non-zero exit (a traceback only with --debug).
"""

from __future__ import annotations

import typer

from lmi_compile.commands import compile as compile_cmd
from lmi_compile.commands import check, fetch, kernel_cache, plan, publish, quantize, run, sagemaker
from lmi_runtime.cli_support import DEBUG_HELP, exit_with_error, set_debug

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


app.command("plan", help=plan.HELP)(plan.plan)
app.command("fetch")(fetch.fetch_command)
app.command("quantize")(quantize.quantize_command)
app.command("compile")(compile_cmd.compile_command)
app.command("kernel-cache")(kernel_cache.kernel_cache_command)
app.command("publish")(publish.publish_command)
app.command("run")(run.run)
app.command("check", help=check.HELP)(check.check)
app.command("sagemaker-optimize")(sagemaker.sagemaker_optimize)
app.command("sagemaker-process")(sagemaker.sagemaker_process)


def main() -> None:
    try:
        app()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - every failure becomes one message
        exit_with_error(err)
