"""Where the model to serve is, and which of its files to load.

`lmi-serve [ARTIFACT]` takes a local folder: a plain Hugging Face folder, or an artifact root
with `lmi-artifact.json` whose weights may sit under `rank0/` while config and tokenizer are
at the root. Without an argument: `/opt/ml/model` when it exists (SageMaker), else
`HF_MODEL_ID` when it is a local path. Remote locations (`s3://`, hub ids) go through the
storage layer's download before this point; `resolve_location` is where that hooks in.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from lmi_runtime.artifact.manifest import MANIFEST_NAME, Manifest
from lmi_runtime.errors import ArtifactError, ModelFolderError

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
SERVABLE_TARGETS = {"torch"}


@dataclass
class ModelFiles:
    root: Path  # config.json and tokenizer files
    weights: list[Path]  # safetensors files
    manifest: Manifest | None = None

    @contextmanager
    def hf_folder(self) -> Iterator[Path]:
        """A folder `from_pretrained` can read: the root itself when the weights are there,
        else a temporary folder of links to the root's files and the weights."""
        if all(w.parent == self.root for w in self.weights):
            yield self.root
            return
        with tempfile.TemporaryDirectory(prefix="lmi-serve-") as tmp:
            for item in self.root.iterdir():
                if item.is_file():
                    (Path(tmp) / item.name).symlink_to(item.resolve())
            for weight in self.weights:
                (Path(tmp) / weight.name).unlink(missing_ok=True)
                (Path(tmp) / weight.name).symlink_to(weight.resolve())
            yield Path(tmp)


def resolve_location(artifact: str | None, env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if artifact is None:
        if SAGEMAKER_MODEL_DIR.is_dir() and any(SAGEMAKER_MODEL_DIR.iterdir()):
            return SAGEMAKER_MODEL_DIR
        artifact = env.get("HF_MODEL_ID")
        if not artifact:
            raise ModelFolderError(
                "no model to serve: no ARTIFACT argument, /opt/ml/model is absent and HF_MODEL_ID is unset",
                hint="run `lmi-serve PATH` or set HF_MODEL_ID to a local model folder",
            )
    if "://" in artifact:
        raise ModelFolderError(
            f"'{artifact}' is a remote location; this build of lmi-serve serves local folders only",
            hint="download it first (e.g. `s5cmd sync 's3://bucket/prefix/*' ./model`) and pass the folder",
        )
    path = Path(artifact).expanduser()
    if not path.is_dir():
        raise ModelFolderError(
            f"'{artifact}' is not a folder",
            hint="pass a Hugging Face model folder or an lmi-compile artifact folder",
        )
    return path


def inspect_folder(path: Path) -> ModelFiles:
    """Find config, tokenizer and weights; check an artifact's manifest against this runtime."""
    path = path.resolve()
    if (path / MANIFEST_NAME).is_file():
        return _artifact_files(path)
    return ModelFiles(path, _safetensors_in(path))


def _artifact_files(root: Path) -> ModelFiles:
    try:
        manifest = Manifest.model_validate_json((root / MANIFEST_NAME).read_text())
    except ValueError as err:
        raise ArtifactError(f"{root / MANIFEST_NAME} is not a valid manifest: {err}") from err
    target = manifest.target
    if target.backend not in SERVABLE_TARGETS:
        raise ArtifactError(
            f"this artifact was compiled for the '{target.backend}' backend; this runtime serves "
            f"{', '.join(sorted(SERVABLE_TARGETS))} artifacts",
            hint=f"serve it with the {target.backend} image, or compile for target torch",
        )
    if target.tp_degree != 1 or target.pp_degree != 1:
        raise ArtifactError(
            f"this artifact is split for TP={target.tp_degree}, PP={target.pp_degree}; "
            "the torch backend of lmi-serve runs one rank",
            hint="compile with tensor_parallel_degree 1 for this runtime",
        )
    for entry in manifest.group_for_rank(0):
        rel = PurePosixPath(entry.path)
        if rel.is_absolute() or ".." in rel.parts:
            raise ArtifactError(f"the manifest lists an unsafe path '{entry.path}'")
        file = root / rel
        if not file.is_file() or file.stat().st_size != entry.size:
            raise ArtifactError(
                f"artifact file '{entry.path}' is missing or has the wrong size",
                hint="download the artifact again; it is incomplete",
            )
    weights = sorted(root / e.path for e in manifest.group_for_rank(0) if e.path.endswith(".safetensors"))
    if not weights:
        weights = _safetensors_in(root / "rank0" if (root / "rank0").is_dir() else root)
    return ModelFiles(root, weights, manifest)


def _safetensors_in(folder: Path) -> list[Path]:
    if not (folder / "config.json").is_file() and not (folder.parent / "config.json").is_file():
        raise ModelFolderError(f"{folder} has no config.json", hint="pass a Hugging Face model folder")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = (
            "this folder only has pickle weights (" + ", ".join(pickled) + "), which lmi-serve does not load; "
            "convert them to safetensors"
            if pickled
            else "the folder needs *.safetensors weights"
        )
        raise ModelFolderError(f"no safetensors weights in {folder}", hint=hint)
    return weights
