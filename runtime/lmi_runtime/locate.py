"""Where the model to serve is, and which of its files to load.

`lmi-serve [ARTIFACT]` takes a local folder (a plain Hugging Face folder, or an artifact root
with `lmi-artifact.json` whose weights sit under `rank0/` while config and tokenizer are at the
root) or an `s3://` artifact, downloaded through the storage layer (the chosen profile's rank 0
files and the shared ones, and for a tensor-parallel profile every other rank's shard for its
worker process, each checked against the manifest) into `LMI_SERVE_CACHE` (default
~/.cache/lmi-serve). A torch profile's weights are read while they download (`artifact.stream`),
each rank's by its own process; vendor profiles are downloaded whole first. An artifact with several
profiles serves the best one for this machine (`artifact.profiles`), or the one `LMI_PROFILE`
pins; a profile outside the root is served from a folder of links (the shared files, overlaid
by the profile's own). Without an argument: `/opt/ml/model` when it holds files (SageMaker; its
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

import atexit
import hashlib
import logging
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from lmi_runtime.artifact.folder import read_manifest, verify_folder
from lmi_runtime.artifact.manifest import MANIFEST_NAME, SHARED_GROUP, Manifest, Profile
from lmi_runtime.artifact.profiles import choose, pinned_profile
from lmi_runtime.backends.vendor import VENDOR_TARGETS
from lmi_runtime.checksums import HashCache
from lmi_runtime.errors import ArtifactError, ModelFolderError
from lmi_runtime.hardware import probe
from lmi_runtime.modelfolder import TOKENIZER_FILES, read_config_file
from lmi_runtime.safepath import safe_join

if TYPE_CHECKING:
    from lmi_runtime.artifact.stream import Arrival

log = logging.getLogger("lmi_runtime.locate")
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
SERVABLE_TARGETS = {"torch"}


@dataclass
class ModelFiles:
    root: Path  # config.json and tokenizer files
    weights: list[Path]  # safetensors files
    manifest: Manifest | None = None  # narrowed to the profile being served
    verification: Future | None = None  # the weights' sha256 check, running while they load
    artifact: Path | None = None  # the artifact root, when `root` is a profile's folder of links
    growing: dict[Path, "Arrival"] = field(default_factory=dict)  # this rank's weights still downloading, by path in `weights`
    arriving: dict[str, "Arrival"] = field(default_factory=dict)  # every rank's, by manifest path (rank 0 waits for all)

    def wait_verified(self) -> None:
        """Block until the background sha256 check of the weights is done (and the weights still
        downloading have landed and matched the manifest); raise what it found."""
        if self.verification is not None:
            self.verification.result()
        self.wait_arrived()

    def wait_arrived(self) -> None:
        """Block until the weights still downloading (every rank's) have landed and matched the manifest."""
        for arrival in self.arriving.values():
            arrival.wait_verified()

    @contextmanager
    def hf_folder(self) -> Iterator[Path]:
        """A folder `from_pretrained` can read (it reads whole files, so downloads finish first):
        the root itself when the weights are there, else a temporary folder of links to the
        root's files and the weights."""
        self.wait_arrived()
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


@dataclass
class Location:
    """Where the model to serve is; `arriving`: its weights still downloading (by manifest path)."""

    path: Path
    arriving: dict[str, "Arrival"] = field(default_factory=dict)


def resolve_location(artifact: str | None, env: dict[str, str] | None = None) -> Path:
    """The local folder of `artifact`, downloaded whole when it is an `s3://` one."""
    location = open_location(artifact, env)
    for arrival in location.arriving.values():
        arrival.wait_verified()
    return location.path


def open_location(artifact: str | None, env: dict[str, str] | None = None) -> Location:
    """The local folder of `artifact`; an `s3://` one's weights may still be arriving."""
    env = dict(os.environ) if env is None else env
    if artifact is None:
        artifact = _default_location(env)
    if artifact.startswith("s3://"):
        return _download(artifact, env)
    return Location(_local_folder(artifact))


def _local_folder(artifact: str) -> Path:
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


def _download(uri: str, env: dict[str, str]) -> Location:
    """Only the profile this machine serves (and the shared files). The torch target: its
    weights stream, every rank's (each rank's loader reads its own as they land). Vendor
    targets: downloaded whole first (their loaders read files we cannot follow)."""
    from lmi_runtime.artifact.download import download_artifact, fetch_manifest
    from lmi_runtime.artifact.stream import stream_artifact
    from lmi_runtime.storage.s3 import S3Options

    dest = serve_cache_root(env) / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    manifest, data = fetch_manifest(uri, S3Options.from_env())
    profile = choose_profile(manifest, pinned_profile(env), say=False)
    if profile.target.backend in SERVABLE_TARGETS:
        cache = HashCache(serve_cache_root(env) / "verified-digests.json")
        return Location(dest, stream_artifact(uri, manifest, data, dest, profile.name, S3Options.from_env(), cache))
    download_artifact(uri, dest, rank=0, s3_options=S3Options.from_env(), profile=profile.name)
    return Location(dest)


def served_profile(location: Path) -> Profile | None:
    """The profile lmi-serve serves from the artifact at `location` (logged with the reason);
    None for a plain model folder."""
    if not (location / MANIFEST_NAME).exists():
        return None
    return choose_profile(read_manifest(location.resolve()), pinned_profile())


def profiles_report(artifact: str | None) -> str:
    """`lmi-serve --list-profiles ARTIFACT`: the profiles, grouped for this machine."""
    from lmi_runtime.artifact.profiles import grouped_report

    if artifact is None:
        raise ModelFolderError("--list-profiles needs an ARTIFACT", hint="lmi-serve --list-profiles PATH_OR_S3_URI")
    if artifact.startswith("s3://"):
        from lmi_runtime.artifact.download import fetch_manifest
        from lmi_runtime.storage.s3 import S3Options

        manifest, _ = fetch_manifest(artifact, S3Options.from_env())
    else:
        manifest = read_manifest(resolve_location(artifact).resolve())
    return grouped_report(manifest, probe())


def choose_profile(manifest: Manifest, pinned: str | None = None, say: bool = True) -> Profile:
    """The profile to serve on this machine (probed), logged with the reason when `say`."""
    profile, why = choose(manifest, probe(), pinned)
    if say:
        log.info("serving profile %s (%s): %s", profile.name, profile.describe(), why)
    return profile


def serve_cache_root(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("LMI_SERVE_CACHE") or Path.home() / ".cache" / "lmi-serve").expanduser()


def inspect_folder(path: Path, verify: bool = True, rank: int = 0, profile: Profile | None = None,
                   arriving: dict[str, "Arrival"] | None = None) -> ModelFiles:
    """Find config, tokenizer and weights (a tensor-parallel rank's own shard) of the artifact's
    profile (`profile`, already chosen for this machine by `served_profile`; else chosen now:
    LMI_PROFILE, else the best), and check its files against the manifest (sha256 skipped with
    `verify=False`; weights still `arriving` are checked as they land, always)."""
    path = path.resolve()
    if (path / MANIFEST_NAME).is_file() or (path / MANIFEST_NAME).is_symlink():
        files = _artifact_files(path, verify, rank, profile, arriving)
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


def _artifact_files(root: Path, verify: bool = True, rank: int = 0, chosen: Profile | None = None,
                    arriving: dict[str, "Arrival"] | None = None) -> ModelFiles:
    everything = read_manifest(root)  # paths checked: nothing may point outside the artifact
    # hardware, toolchain, device count and memory: checked while choosing (artifact.profiles)
    profile = chosen if chosen is not None else choose_profile(everything, pinned_profile(), say=rank == 0)
    manifest = everything.only(profile.name)
    target = manifest.target
    cache = HashCache(serve_cache_root() / "verified-digests.json")
    if target.backend in VENDOR_TARGETS:  # trtllm / neuron: their own layout
        verify_folder(root, everything, manifest.group_for_rank(0), cache=cache, hash_digests=verify)
        return ModelFiles(_profile_root(root, manifest), [], manifest, artifact=root)
    if target.pp_degree != 1:
        raise ArtifactError(
            f"this artifact is split for PP={target.pp_degree}; the torch backend of lmi-serve has no pipeline parallelism",
            hint="compile with pipeline_parallel_degree 1 for this runtime",
        )
    entries = manifest.group_for_rank(rank)
    weight_entries = [e for e in entries if e.path.endswith(".safetensors")]
    small = [e for e in entries if not e.path.endswith(".safetensors")]
    # Presence, sizes and extras of everything, plus the sha256 of what is read before the
    # weights (config, tokenizer, ...): now. The weights' sha256: while they load. Extras are
    # judged against every profile's files: another profile's are not extra.
    arriving = arriving or {}
    landed = [e for e in weight_entries if e.path not in arriving]
    verify_folder(root, everything, small, cache=cache, hash_digests=verify)
    verify_folder(root, everything, landed, hash_digests=False)
    if not weight_entries:
        raise ArtifactError(f"the manifest of {root} lists no safetensors weights for rank {rank}",
                            hint="rebuild the artifact")
    model_root = _profile_root(root, manifest)
    weights = sorted(model_root / _in_profile(e.path, profile) for e in weight_entries)
    growing = {model_root / _in_profile(e.path, profile): arriving[e.path] for e in weight_entries if e.path in arriving}
    files = ModelFiles(model_root, weights, manifest, artifact=root, growing=growing, arriving=arriving)
    if verify and landed:
        pool = ThreadPoolExecutor(1, thread_name_prefix="lmi-verify")
        files.verification = pool.submit(verify_folder, root, everything, landed, cache=cache, spare_cores=1)
        pool.shutdown(wait=False)
    return files


def _in_profile(path: str, profile: Profile) -> str:
    """A file's path as the model sees it: relative to its profile's folder."""
    return path[len(profile.folder) + 1:] if profile.folder and path.startswith(profile.folder + "/") else path


def _profile_root(root: Path, manifest: Manifest) -> Path:
    """The root itself for the profile at the root; for another, a folder of links to the shared
    files overlaid by the profile's own (its config.json, if it has one, wins)."""
    profile = manifest.profile
    if not profile.folder:
        return root
    view = Path(tempfile.mkdtemp(prefix="lmi-serve-profile-"))
    atexit.register(shutil.rmtree, view, True)
    ordered = manifest.files.get(SHARED_GROUP, []) + [e for g, es in manifest.files.items() if g != SHARED_GROUP for e in es]
    for entry in ordered:
        link = view / _in_profile(entry.path, profile)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(root / entry.path)
    return view


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
