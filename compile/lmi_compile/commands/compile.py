"""`lmi-compile compile MODEL_DIR --out DIR`: run the compile stage alone on a model folder."""

from __future__ import annotations

from pathlib import Path

import typer

from lmi_compile.commands.common import InstanceOption, printed_warnings, stage_logger
from lmi_runtime.errors import ConfigError


def compile_command(
    model_dir: Path = typer.Argument(..., help="Model folder: fetched, or quantized by `lmi-compile quantize`."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the target's files."),
    recipe: Path | None = typer.Option(None, "--recipe", help="Recipe YAML: its target, limits and quantize sections."),
    backend: str | None = typer.Option(None, "--backend", help="auto | torch | trtllm | neuron (default: the recipe's, else auto)."),
    tp_degree: str | None = typer.Option(None, "--tp-degree", help="Tensor-parallel degree, or 'max'."),
    instance_type: InstanceOption = None,
) -> None:
    """Compile a model folder for its planned target: per-rank shards for torch, the vendor build
    for trtllm / neuron. The plan decides what the options leave open, as in `lmi-compile run`."""
    from lmi_compile.recipe_loader import read_recipe_file, recipe_from_dict
    from lmi_compile.stages.compile import compile_model
    from lmi_compile.stages.plan import checked_plan

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty folder", hint="choose a new or empty --out folder")
    with printed_warnings():
        data = read_recipe_file(recipe) if recipe is not None else {}
        data["source"] = {**data.get("source", {}), "uri": str(model_dir), "revision": None}
        target = data.setdefault("target", {})
        if backend is not None:
            target["backend"] = backend
        if tp_degree is not None:
            target["tp_degree"] = int(tp_degree) if tp_degree.isdigit() else tp_degree
        chosen = recipe_from_dict(data, where=recipe.name if recipe else "the compile options")
        plan = checked_plan(chosen, instance_type=instance_type)
    info = compile_model(chosen, plan, model_dir, out, stage_logger())
    typer.echo(f"compiled {model_dir} for {info.backend} (TP {info.tp_degree}, {info.dtype}) → {out}")
