"""SageMaker optimization jobs (CreateOptimizationJob), on the contract LMI's own jobs use.

SageMaker mounts the input model at `SM_NEO_INPUT_MODEL_DIR`, collects the result from
`SM_NEO_COMPILED_MODEL_DIR`, and shows a failure from `SM_NEO_COMPILATION_ERROR_FILE`
(`{"error": "..."}`) as the job's failure reason; the job's OverrideEnvironment carries the
settings as `OPTION_*` variables (a `serving.properties` shipped with the model is read too).
A recipe (`LMI_RECIPE`, a path absolute or inside the input model) replaces those settings.
The output is a complete artifact with its `serving.properties`, deployable as is.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lmi_compile.recipe import Recipe
from lmi_compile.recipe_loader import load_recipe, recipe_from_serving_config
from lmi_runtime.cli_support import as_user_error
from lmi_runtime.config import load_serving_config
from lmi_runtime.config.settings import Setting
from lmi_runtime.errors import ConfigError, LmiError
from lmi_runtime.safepath import safe_join

REQUIRED = ("SM_NEO_INPUT_MODEL_DIR", "SM_NEO_COMPILED_MODEL_DIR", "SM_NEO_COMPILATION_ERROR_FILE")
RECIPE_VARIABLE = "LMI_RECIPE"


@dataclass(frozen=True)
class NeoPaths:
    input_dir: Path
    output_dir: Path
    error_file: Path
    cache_dir: Path | None  # the stage cache, kept between jobs when SageMaker provides one
    hf_cache_dir: Path | None  # Hugging Face datasets (calibration and evaluation text)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "NeoPaths":
        missing = [name for name in REQUIRED if not env.get(name)]
        if missing:
            raise ConfigError(f"{', '.join(missing)} not set: this entry runs inside a SageMaker optimization job",
                              hint="SageMaker sets the SM_NEO_* variables; on a workstation use `lmi-compile run`")
        optional = {name: Path(env[name]) if env.get(name) else None for name in ("SM_NEO_CACHE_DIR", "SM_NEO_HF_CACHE_DIR")}
        return cls(Path(env["SM_NEO_INPUT_MODEL_DIR"]), Path(env["SM_NEO_COMPILED_MODEL_DIR"]),
                   Path(env["SM_NEO_COMPILATION_ERROR_FILE"]), optional["SM_NEO_CACHE_DIR"], optional["SM_NEO_HF_CACHE_DIR"])


def job_recipe(paths: NeoPaths, env: Mapping[str, str]) -> tuple[Recipe, str | None]:
    """The recipe for this job (and the hub token, never part of a recipe): `LMI_RECIPE` if set,
    else the LMI configuration; in both, the model is the input folder and the output the
    compiled-model folder."""
    token = env.get("HF_TOKEN") or None
    if not paths.input_dir.is_dir():
        raise ConfigError(f"the input model folder {paths.input_dir} (SM_NEO_INPUT_MODEL_DIR) does not exist",
                          hint="check the job's ModelSource: its S3 URI must point at an uncompressed model folder")
    if env.get(RECIPE_VARIABLE):
        recipe = load_recipe(_recipe_path(env[RECIPE_VARIABLE], paths.input_dir))
        if ignored := sorted(name for name in env if name.startswith("OPTION_")):
            warnings.warn(f"{', '.join(ignored)} ignored: the recipe {env[RECIPE_VARIABLE]} ({RECIPE_VARIABLE}) "
                          "gives every setting", stacklevel=2)
    else:
        properties = paths.input_dir if (paths.input_dir / "serving.properties").is_file() else None
        model = Setting("option.model_id", str(paths.input_dir), "SM_NEO_INPUT_MODEL_DIR", "SM_NEO_INPUT_MODEL_DIR")
        config = load_serving_config(env, properties, overrides={"option.model_id": model})
        if config.hf_token:
            token = config.hf_token.get_secret_value()
        recipe = recipe_from_serving_config(config)
    recipe.source.uri, recipe.source.revision = str(paths.input_dir), None
    recipe.output.uri = str(paths.output_dir)
    if paths.cache_dir is not None:
        recipe.output.cache_dir = str(paths.cache_dir / "lmi-stages")
    return recipe, token


def _recipe_path(value: str, input_dir: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else safe_join(input_dir, value, ConfigError, f"{RECIPE_VARIABLE} path")


def error_text(err: LmiError) -> str:
    return f"{err.message} (hint: {err.hint})" if err.hint else err.message


def write_error_file(path: Path, err: LmiError) -> None:
    """`{"error": "<message> (hint: …)"}`, written whole (temp + rename); messages are redacted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"error": error_text(err)}), encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def reported_in(error_file: Path | None) -> Iterator[None]:
    """Any failure inside is written to `error_file` (when known), then raised as before."""
    try:
        yield
    except Exception as err:
        if error_file is not None:
            try:
                write_error_file(error_file, as_user_error(err))
            except OSError as write_err:
                warnings.warn(f"could not write the error file {error_file}: {write_err.strerror or write_err}", stacklevel=2)
        raise
