"""`lmi-compile check ARTIFACT --for INSTANCE`: preflight a deployment (see lmi_compile.preflight)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

HELP = """Check that ARTIFACT (a folder or s3://…) starts and serves on an instance: manifest and checksums,
the profile chosen there, weights + activation reserve + KV cache against a device's memory, and the limits.
Without --for: this machine. Exit status 0 when every check passes (warnings allowed), 1 when one fails."""

STYLE = {"pass": "green", "warn": "yellow", "fail": "red"}


def check(
    artifact: str = typer.Argument(..., help="Artifact folder or s3:// location.", show_default=False),
    instance_type: str | None = typer.Option(None, "--for", help="SageMaker instance type (e.g. ml.g5.2xlarge); default: this machine."),
    profile: str | None = typer.Option(None, "--profile", help="Check this profile instead of the one chosen for the instance."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    from lmi_compile.preflight import preflight
    from lmi_runtime.storage.s3 import S3Options

    report = preflight(artifact, instance_type, profile, S3Options.from_env())
    if as_json:
        typer.echo(report.to_json())
    else:
        console = Console(soft_wrap=True)
        console.print(f"{escape(report.artifact)} on {escape(report.hardware)}"
                      + (f", profile {escape(report.profile)}" if report.profile else ""), highlight=False)
        table = Table("check", "result", "numbers", show_lines=False)
        for row in report.checks:
            table.add_row(row.check, f"[{STYLE[row.status]}]{row.status}[/]", escape(row.detail))
        console.print(table)
        console.print("[green]PASS[/]" if report.passed else "[red]FAIL[/]")
    if not report.passed:
        raise SystemExit(1)
