"""Where the model to serve is, and which of its files to load.

`lmi-serve [ARTIFACT]` takes a local folder (a plain Hugging Face folder, or an artifact root
with `lmi-artifact.json` whose weights sit under `rank0/` while config and tokenizer are at the
root) or an `s3://` artifact, downloaded through the storage layer (rank 0's files and the
shared ones, and for a tensor-parallel artifact every other rank's shard for its worker
process, each checked against the manifest) into `LMI_SERVE_CACHE` (default
~/.cache/lmi-serve). Without an argument: `/opt/ml/model` when it holds files (SageMaker; its
serving.properties may name the model with option.model_id, as in LMI), else `HF_MODEL_ID`.

Verify before load, always: a local artifact is checked like a downloaded one. Presence,
sizes and files outside the manifest are checked at once; the sha256 of config, tokenizer and
every other small file before anything reads them; the weights' sha256 in a background thread
while the backend reads them (`ModelFiles.wait_verified` joins it before the server turns
ready). Digests are cached by file identity in LMI_SERVE_CACHE/verified-digests.json, so a
restart rehashes nothing unchanged. Files outside the manifest are refused, not ignored: the
loader reads a folder by name (any config, tokenizer, template or `*.py` there can change
what is served), so an unlisted file is as dangerous as an altered one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lmi_runtime.artifact.folder import read_manifest, verify_folder
from lmi_runtime.artifact.manifest import MANIFEST_NAME, Manifest
from lmi_runtime.artifact.toolchain import check_here
from lmi_runtime.backends.vendor import VENDOR_TARGETS
from lmi_runtime.checksums import HashCache
from lmi_runtime.errors import ArtifactError, ModelFolderError
from lmi_runtime.hardware import probe
from lmi_runtime.modelfolder import TOKENIZER_FILES, read_config_file
from lmi_runtime.safepath import safe_join

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
SERVABLE_TARGETS = {"torch"}


@dataclass
class ModelFiles:
    root: Path  # config.json and tokenizer files
    weights: list[Path]  # safetensors files
    manifest: Manifest | None = None
    verification: Future | None = None  # the weights' sha256 check, running while they load

    def wait_verified(self) -> None:
        """Block until the background sha256 check of the weights is done; raise what it found."""
        if self.verification is not None:
            self.verification.result()

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
        artifact = _default_location(env)
    if artifact.startswith("s3://"):
        return _download(artifact, env)
    if "://" in artifact:
        raise ModelFolderError(
            f"'{artifact}' is not a location lmi-serve can read",
            hint="pass a local folder or an s3:// artifact prepared by lmi-compile",
        )
    path = Path(artifact).expanduser()
    if not path.is_dir():
        raise ModelFolderError(
            f"'{artifact}' is not a folder",
            hint="pass a Hugging Face model folder, an lmi-compile artifact folder or its s3:// location "
            "(hub ids are prepared ahead of time: lmi-compile run)",
        )
    return path


def _default_location(env: dict[str, str]) -> str:
    if SAGEMAKER_MODEL_DIR.is_dir() and any(SAGEMAKER_MODEL_DIR.iterdir()):
        pointer = _model_id_in_properties(SAGEMAKER_MODEL_DIR)
        return pointer or str(SAGEMAKER_MODEL_DIR)
    if env.get("HF_MODEL_ID"):
        return env["HF_MODEL_ID"]
    raise ModelFolderError(
        "no model to serve: no ARTIFACT argument, /opt/ml/model is absent and HF_MODEL_ID is unset",
        hint="run `lmi-serve PATH_OR_S3_URI` or set HF_MODEL_ID",
    )


def _model_id_in_properties(folder: Path) -> str | None:
    """LMI's pattern: a model folder holding only serving.properties that points elsewhere."""
    if (folder / "config.json").exists() or (folder / MANIFEST_NAME).exists():
        return None
    if not (folder / "serving.properties").is_file():
        return None
    from lmi_runtime.config import load_serving_config

    return load_serving_config(env={}, properties=folder).model_id


def _download(uri: str, env: dict[str, str]) -> Path:
    from lmi_runtime.artifact.download import download_artifact
    from lmi_runtime.storage.s3 import S3Options

    dest = serve_cache_root(env) / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    manifest = download_artifact(uri, dest, rank=0, s3_options=S3Options.from_env())
    for rank in range(1, manifest.target.tp_degree if manifest.target.backend in SERVABLE_TARGETS else 1):
        download_artifact(uri, dest, rank=rank, s3_options=S3Options.from_env())  # the workers' own shards
    return dest


def serve_cache_root(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("LMI_SERVE_CACHE") or Path.home() / ".cache" / "lmi-serve").expanduser()


def inspect_folder(path: Path, verify: bool = True, rank: int = 0) -> ModelFiles:
    """Find config, tokenizer and weights (a tensor-parallel rank's own shard); check an
    artifact's manifest against this runtime and its files against the manifest (sha256
    skipped with `verify=False`)."""
    path = path.resolve()
    if (path / MANIFEST_NAME).is_file() or (path / MANIFEST_NAME).is_symlink():
        files = _artifact_files(path, verify, rank)
    else:
        files = ModelFiles(path, _safetensors_in(path))
        _refuse_links_out(path, files)
    if (files.root / "config.json").is_file():  # sizes in bounds before the loader allocates anything
        read_config_file(files.root / "config.json", str(path))
    return files


def _refuse_links_out(root: Path, files: ModelFiles) -> None:
    """A plain model folder has no manifest to check, but nothing it makes us read may be a
    symlink to a file outside it."""
    names = ["config.json", *TOKENIZER_FILES, "tokenizer_config.json", "generation_config.json"]
    for name in names:
        if (root / name).exists() or (root / name).is_symlink():
            safe_join(root, name, ModelFolderError, "model file")
    for weight in files.weights:
        safe_join(root, weight.relative_to(root).as_posix(), ModelFolderError, "weights file")


def _artifact_files(root: Path, verify: bool = True, rank: int = 0) -> ModelFiles:
    manifest = read_manifest(root)  # paths checked: nothing may point outside the artifact
    target = manifest.target
    if target.backend in VENDOR_TARGETS:  # trtllm / neuron: their own layout and toolchain check
        check_here(target, manifest.quantization.method)
        cache = HashCache(serve_cache_root() / "verified-digests.json")
        verify_folder(root, manifest, manifest.group_for_rank(0), cache=cache, hash_digests=verify)
        return ModelFiles(root, [], manifest)
    if target.backend not in SERVABLE_TARGETS:
        raise ArtifactError(
            f"this artifact was compiled for the '{target.backend}' backend; this runtime serves "
            f"{', '.join(sorted(SERVABLE_TARGETS))} artifacts",
            hint=f"serve it with the {target.backend} image, or compile for target torch",
        )
    _check_hardware(target.hardware)
    if target.pp_degree != 1:
        raise ArtifactError(
            f"this artifact is split for PP={target.pp_degree}; the torch backend of lmi-serve has no pipeline parallelism",
            hint="compile with pipeline_parallel_degree 1 for this runtime",
        )
    entries = manifest.group_for_rank(rank)
    weight_entries = [e for e in entries if e.path.endswith(".safetensors")]
    small = [e for e in entries if not e.path.endswith(".safetensors")]
    cache = HashCache(serve_cache_root() / "verified-digests.json")
    # Presence, sizes and extras of everything, plus the sha256 of what is read before the
    # weights (config, tokenizer, ...): now. The weights' sha256: while they load.
    verify_folder(root, manifest, small, cache=cache, hash_digests=verify)
    verify_folder(root, manifest, weight_entries, hash_digests=False)
    weights = sorted(root / e.path for e in weight_entries)
    if not weights:
        raise ArtifactError(f"the manifest of {root} lists no safetensors weights for rank {rank}",
                            hint="rebuild the artifact")
    files = ModelFiles(root, weights, manifest)
    if verify:
        pool = ThreadPoolExecutor(1, thread_name_prefix="lmi-verify")
        files.verification = pool.submit(verify_folder, root, manifest, weight_entries, cache=cache)
        pool.shutdown(wait=False)
    return files


def _check_hardware(wanted: dict) -> None:
    """Refuse an artifact built for other hardware (a kernel cache or engine for another GPU)."""
    kind = wanted.get("kind", "any")
    if kind == "any":
        return
    here = probe()
    arch = wanted.get("arch")
    if here.kind != kind or (arch and here.arch != arch):
        built = kind + (f" {arch}" if arch else "")
        raise ArtifactError(
            f"this artifact was built for {built}, but this machine has {here.describe()}",
            hint="compile the artifact for this hardware (lmi-compile run on the same GPU type), "
            "or serve it on the hardware it was built for",
        )


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
