"""The stage cache: a stage's output folder stored under a key that covers everything that
changes it — the digests of its input files, its settings (canonical JSON) and the versions
of the tools that produce it. (LMI keyed its engine cache on model id, TP and PP only, and
silently reused stale builds when quantization or dtype changed.)

Local entries live in `<root>/<key>/` with a marker `<root>/<key>.json` written last; an
optional remote (`s3://…` or a folder) holds `<key>/…` files plus `<key>/lmi-stage.json`,
written last the same way as an artifact's manifest.

An entry is reused only when every file still has the sha256 recorded when it was stored
(digests cached by file identity, so an untouched entry is not re-read): a cached model whose
bytes were changed in place is discarded and the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lmi_compile import __version__
from lmi_compile.sources.bundled import default_cache_root
from lmi_runtime.artifact.folder import file_entries
from lmi_runtime.artifact.manifest import FileEntry
from lmi_runtime.artifact.transfer import pull, push
from lmi_runtime.checksums import HashCache, hash_files
from lmi_runtime.errors import ArtifactError
from lmi_runtime.safepath import safe_join
from lmi_runtime.storage import open_storage, parse_uri

TOOLS = ("torch", "transformers", "llmcompressor", "compressed-tensors", "safetensors", "tensorrt-llm", "optimum-neuron")
MARKER = "lmi-stage.json"
DIGESTS = "digests.json"  # HashCache of the entries' files


class CacheEntry(BaseModel):
    key: str
    stage: str
    files: list[FileEntry]


def tool_versions(names: tuple[str, ...] = TOOLS) -> dict[str, str]:
    versions = {"lmi-compile": __version__}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def input_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's (relative path, size, sha256) list."""
    if path.is_file():
        return hash_files([path])[path]
    entries = sorted((e for group in file_entries(path, include_manifest=True).values() for e in group), key=lambda e: e.path)
    lines = "".join(f"{e.path}\t{e.size}\t{e.sha256}\n" for e in entries)
    return hashlib.sha256(lines.encode()).hexdigest()


def canonical_json(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(stage: str, inputs: list[Path], settings: Any, tools: dict[str, str] | None = None) -> str:
    payload = {
        "stage": stage,
        "inputs": [input_digest(p) for p in inputs],
        "settings": json.loads(canonical_json(settings)),
        "tools": tool_versions() if tools is None else tools,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class StageCache:
    def __init__(self, root: Path | None = None, remote: str | None = None, s3_options=None):
        self.root = (root or default_cache_root() / "stages").expanduser()
        self.remote = remote
        self.s3_options = s3_options

    def _remote(self, key: str):
        return open_storage(parse_uri(self.remote).child(key), self.s3_options)

    def get(self, key: str) -> Path | None:
        """The cached output folder for `key` (pulled from the remote if only there), or None."""
        local = self._local(key)
        if local is not None or not self.remote:
            return local
        storage = self._remote(key)
        found = storage.get_bytes(MARKER)
        if found is None:
            return None
        entry = CacheEntry.model_validate_json(found[0])
        staging = self._staging(key)
        try:
            pull(storage, entry.files, staging)
            return self._commit(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def put(self, key: str, folder: Path, stage: str = "", move: bool = False) -> Path:
        """Store `folder` under `key` (temp + rename; marker last) and push it to the remote.
        `move` hands the folder over instead of copying it (a renamed model of many GB is not
        written twice when the work folder and the cache share a filesystem)."""
        staging = self._staging(key)
        try:
            if move:
                for item in folder.iterdir():
                    shutil.move(item, staging / item.name)
            else:
                shutil.copytree(folder, staging, dirs_exist_ok=True, symlinks=False)
            files = [e for group in file_entries(staging, include_manifest=True).values() for e in group]
            entry = CacheEntry(key=key, stage=stage, files=files)
            path = self._commit(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self.remote:
            push(path, entry.files, self._remote(key), MARKER, entry.model_dump_json(indent=1).encode())
        return path

    def _local(self, key: str) -> Path | None:
        marker, path = self.root / f"{key}.json", self.root / key
        if not marker.is_file() or not path.is_dir():
            return None
        try:
            entry = CacheEntry.model_validate_json(marker.read_bytes())
            files = [safe_join(path, e.path, ArtifactError, "cached file") for e in entry.files]
        except (ValueError, ArtifactError):
            return self._discard(key, "its marker is unreadable")
        if any(not f.is_file() or f.stat().st_size != e.size for f, e in zip(files, entry.files)):
            return self._discard(key, "a file is missing or has another size")
        digests = hash_files(files, "checking cached stage", HashCache(self.root / DIGESTS))
        if altered := [e.path for f, e in zip(files, entry.files) if digests[f] != e.sha256]:
            return self._discard(key, f"{', '.join(altered)} changed since it was cached")
        return path

    def _discard(self, key: str, why: str) -> None:
        """A damaged entry is a miss: say so, remove it, and let the stage run again."""
        warnings.warn(f"stage cache entry {key[:12]} is not used: {why}; the stage runs again", stacklevel=3)
        (self.root / f"{key}.json").unlink(missing_ok=True)
        shutil.rmtree(self.root / key, ignore_errors=True)
        return None

    def _staging(self, key: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=self.root))

    def _commit(self, staging: Path, entry: CacheEntry) -> Path:
        if any(e.path == MARKER for e in entry.files):
            raise ArtifactError(f"a stage output may not contain a top-level {MARKER}", hint="rename that file")
        path, marker = self.root / entry.key, self.root / f"{entry.key}.json"
        marker.unlink(missing_ok=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
        tmp = self.root / f".{entry.key}.json.tmp"
        tmp.write_text(entry.model_dump_json(indent=1))
        os.replace(tmp, marker)
        return path
