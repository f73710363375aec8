"""`lmi-compile publish ARTIFACT_DIR DEST`: verify an artifact and publish it, manifest last."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from lmi_compile.commands.common import RetryOption


def publish_command(
    artifact_dir: Path = typer.Argument(..., help="artifact folder holding lmi-artifact.json"),
    dest: str = typer.Argument(..., help="local folder or s3://bucket/prefix"),
    retry_count: RetryOption = None,
    workers: Optional[int] = typer.Option(None, "--workers", help="files in flight (s5cmd --numworkers)"),
) -> None:
    """Publish an artifact; files already there (same size and sha256) are not sent again."""
    from lmi_compile.stages.publish import publish
    from lmi_runtime.storage.s3 import S3Options

    ref = publish(artifact_dir, dest, S3Options.from_env(retry_count=retry_count, workers=workers))
    mb = ref.bytes_sent / 1e6
    speed = f" at {mb / ref.seconds:.0f} MB/s" if ref.seconds > 0 and mb > 0 else ""
    Console().print(
        f"[green]published[/] {ref.uri}  manifest sha256 {ref.manifest_sha256[:16]}…\n"
        f"  sent {len(ref.sent)} files ({mb:.1f} MB{speed}, {ref.tool}), {len(ref.skipped)} already there",
        highlight=False,
    )
