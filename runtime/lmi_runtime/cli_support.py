"""What both CLIs share: turning any failure into one clear message (what is wrong + a hint)
and a non-zero exit. A traceback is shown only with --debug (or LMI_DEBUG=1)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, NoReturn, TypeVar

from rich.console import Console
from rich.markup import escape

from lmi_runtime.errors import LmiError, debug_enabled, os_failure
from lmi_runtime.redact import redact

F = TypeVar("F", bound=Callable)
stderr = Console(stderr=True)
DEBUG_HELP = "Show the full traceback of an error (also LMI_DEBUG=1)."


def set_debug(enabled: bool) -> None:
    if enabled:
        os.environ["LMI_DEBUG"] = "1"


def print_error(err: LmiError) -> None:
    stderr.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False, soft_wrap=True)
    if err.hint:
        stderr.print(f"[yellow]hint:[/] {escape(err.hint)}", highlight=False, soft_wrap=True)


def as_user_error(err: BaseException) -> LmiError:
    """Any exception as an LmiError: OS errors name the path and what to do, the rest say what
    happened and how to see more."""
    if isinstance(err, LmiError):
        return err
    if isinstance(err, OSError):
        return os_failure(err)
    first_line = (str(err).strip().splitlines() or [""])[0]
    return LmiError(f"unexpected {type(err).__name__}: {first_line[:300]}",
                    hint="run again with --debug for the traceback, and report it if the input was valid")


def exit_with_error(err: Exception) -> NoReturn:
    """Print `error: …` / `hint: …` for a failure and exit with its code; with --debug, the
    traceback too (an unexpected error is re-raised whole)."""
    if debug_enabled() and not isinstance(err, LmiError):
        raise err
    if debug_enabled():
        import traceback

        stderr.print(redact("".join(traceback.format_exception(err))), markup=False, highlight=False)
    user = as_user_error(err)
    print_error(user)
    sys.exit(user.exit_code)


def user_errors(fn: F) -> F:
    """Decorate a CLI command so that every error prints `error: …` / `hint: …` and exits non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes one message
            exit_with_error(err)

    return wrapper  # type: ignore[return-value]
