"""`lmi-compile sagemaker-optimize` and `sagemaker-process`: the pipeline inside SageMaker jobs
(see lmi_compile.jobs). Both log one plain line per stage (CloudWatch) and end with the run's
summary on stdout."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from lmi_compile.commands.common import printed_warnings, stage_logger


def _device() -> str:
    from lmi_runtime.hardware import probe

    return "cuda" if probe().kind == "cuda" else "cpu"


def sagemaker_optimize() -> None:
    """Run as a SageMaker optimization job: the model from SM_NEO_INPUT_MODEL_DIR, settings from
    OPTION_* (or the recipe in LMI_RECIPE), the artifact into SM_NEO_COMPILED_MODEL_DIR; a
    failure is written to SM_NEO_COMPILATION_ERROR_FILE as {"error": "..."}."""
    from lmi_compile.jobs.optimization import NeoPaths, job_recipe, reported_in

    error_file = os.environ.get("SM_NEO_COMPILATION_ERROR_FILE")
    with reported_in(Path(error_file) if error_file else None), printed_warnings():
        paths = NeoPaths.from_env(os.environ)
        if paths.hf_cache_dir is not None:  # as LMI does: calibration datasets go there
            os.environ["HF_DATASETS_CACHE"] = str(paths.hf_cache_dir)
        recipe, token = job_recipe(paths, os.environ)
        _run(recipe, token)


def sagemaker_process(
    recipe: Path | None = typer.Option(None, "--recipe", help="Recipe file (default: the one YAML file in input/recipe/)."),
    out: str | None = typer.Option(None, "--out", help="Publish here (folder or s3://…) instead of the recipe's s3:// output or output/artifact/."),
) -> None:
    """Run as a SageMaker processing job: the recipe from /opt/ml/processing/input/recipe/, the
    model from input/model/ when given, the artifact to the recipe's s3:// output or to
    /opt/ml/processing/output/artifact/ (root: LMI_PROCESSING_ROOT)."""
    from lmi_compile.jobs.processing import ProcessingPaths, job_recipe

    with printed_warnings():
        chosen = job_recipe(ProcessingPaths.from_env(os.environ), recipe, out)
        _run(chosen, os.environ.get("HF_TOKEN") or None)


def _run(recipe, token: str | None) -> None:
    from lmi_compile.pipeline import run_recipe
    from lmi_runtime.storage.s3 import S3Options

    result = run_recipe(recipe, token=token, device=_device(), s3_options=S3Options.from_env(), log=stage_logger())
    typer.echo(result.summary().text())
