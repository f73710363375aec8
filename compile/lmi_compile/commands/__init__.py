"""CLI commands, one module each; `register_all` attaches them to the typer app."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES: list[str] = ["plan", "fetch", "quantize", "run", "publish", "check"]


def register_all(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"lmi_compile.commands.{name}").register(app)
