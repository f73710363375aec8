"""`lmi-compile fetch SOURCE --out DIR`: download and validate a model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lmi_compile.commands.common import RetryOption


def fetch_command(
    source: str = typer.Argument(..., help="org/name (hub), s3://bucket/prefix, s3://…/model.tar.gz, a local folder, or bundled://smollm2"),
    out: Path = typer.Option(..., "--out", help="folder to write the validated model to"),
    revision: Optional[str] = typer.Option(None, help="hub branch, tag or commit"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept pickle .bin weights when no safetensors exist"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="accept models that need their own Python code (auto_map)"),
    retry_count: RetryOption = None,
) -> None:
    """Fetch a model into a folder and check that it is usable (config, tokenizer, weights)."""
    from lmi_compile.recipe import SourceSpec
    from lmi_compile.stages.fetch import fetch
    from lmi_runtime.storage.s3 import S3Options

    spec = SourceSpec(uri=source, revision=revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    model = fetch(spec, out, S3Options.from_env(retry_count=retry_count))
    Console().print(
        f"[green]fetched[/] {source} → {model.path}\n"
        f"  architecture: {model.architecture}   format: {model.format}   weights: {', '.join(model.weight_files)}",
        highlight=False,
    )
