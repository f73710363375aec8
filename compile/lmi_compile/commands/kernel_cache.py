"""`lmi-compile kernel-cache ARTIFACT_DIR`: compile a torch profile's kernels into the artifact, on
the GPU it will be served on."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def kernel_cache_command(
    artifact_dir: Path = typer.Argument(..., help="artifact folder holding lmi-artifact.json (then publish it)"),
    profile: Optional[str] = typer.Option(None, "--profile", help="the torch profile (default: the only one)"),
) -> None:
    """Build the kernel cache of a torch profile on this machine's GPU: lmi-serve then starts
    without compiling on this GPU arch with these torch/triton/CUDA versions, and refuses the
    cache elsewhere (--recompile rebuilds it there)."""
    from lmi_compile.stages.kernel_cache import add_kernel_cache, build_on_this_gpu

    updated, info, size = add_kernel_cache(artifact_dir, profile, build_on_this_gpu)
    typer.echo(f"kernel cache of profile {updated.name} built for {info.describe()} "
               f"({size / 2**20:.1f} MiB) → {artifact_dir}")
