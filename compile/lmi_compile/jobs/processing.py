"""SageMaker processing jobs (CreateProcessingJob): `lmi-compile run` on SageMaker's folders.

SageMaker copies each ProcessingInput under `/opt/ml/processing/input/<name>` and uploads
`/opt/ml/processing/output/<name>` when the job ends. The recipe comes from `input/recipe/`
(the one YAML file there, or `--recipe`), the model from `input/model/` when that input is
given (else the recipe's source), and the artifact goes to the recipe's `s3://` output
(published directly, manifest last) or, for any other output, to `output/artifact/`.
`LMI_PROCESSING_ROOT` moves the root (tests, local runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lmi_compile.recipe import Recipe
from lmi_compile.recipe_loader import load_recipe
from lmi_runtime.errors import ConfigError

ROOT_VARIABLE = "LMI_PROCESSING_ROOT"
DEFAULT_ROOT = "/opt/ml/processing"


@dataclass(frozen=True)
class ProcessingPaths:
    recipe_dir: Path
    model_dir: Path
    output_dir: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ProcessingPaths":
        root = Path(env.get(ROOT_VARIABLE) or DEFAULT_ROOT)
        return cls(root / "input" / "recipe", root / "input" / "model", root / "output" / "artifact")


def job_recipe(paths: ProcessingPaths, recipe: Path | None = None, out: str | None = None) -> Recipe:
    chosen = load_recipe(recipe or _only_recipe(paths.recipe_dir))
    if paths.model_dir.is_dir() and any(paths.model_dir.iterdir()):
        chosen.source.uri, chosen.source.revision = str(paths.model_dir), None
    if out is not None:
        chosen.output.uri = out
    elif not chosen.output.uri.startswith("s3://"):
        chosen.output.uri = str(paths.output_dir)
    return chosen


def _only_recipe(folder: Path) -> Path:
    found = sorted(p for p in folder.glob("*") if p.suffix in (".yaml", ".yml") and p.is_file()) if folder.is_dir() else []
    if len(found) != 1:
        what = "no recipe" if not found else f"{len(found)} recipes ({', '.join(p.name for p in found)})"
        raise ConfigError(f"{what} in {folder}",
                          hint="give the job one ProcessingInput named 'recipe' holding one YAML file, or pass --recipe PATH")
    return found[0]
