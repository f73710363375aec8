"""What both CLIs share: turning an LmiError into a clear message and a non-zero exit."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

from rich.console import Console

from lmi_runtime.errors import LmiError

F = TypeVar("F", bound=Callable)
stderr = Console(stderr=True)


def user_errors(fn: F) -> F:
    """Decorate a CLI command so that an LmiError prints `error: …` / `hint: …` and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LmiError as err:
            stderr.print(f"[bold red]error:[/] {err.message}", highlight=False)
            if err.hint:
                stderr.print(f"[yellow]hint:[/] {err.hint}", highlight=False)
            sys.exit(err.exit_code)

    return wrapper  # type: ignore[return-value]
