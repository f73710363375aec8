"""Build, write, read and verify the manifest of an artifact folder.

Every path in a manifest must stay inside the artifact root: absolute paths, `..`,
backslashes and symlinks that lead outside are refused when a manifest is written and again
when one is read, because a manifest may come from a bucket someone else can write to.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from pydantic import ValidationError

from lmi_runtime.artifact.manifest import (
    MANIFEST_NAME,
    PROFILES_DIR,
    READABLE_FORMAT_VERSIONS,
    SHARED_GROUP,
    FileEntry,
    Manifest,
)
from lmi_runtime.checksums import HashCache, block_digests, check_files, hash_files
from lmi_runtime.errors import ArtifactError
from lmi_runtime.safepath import check_relpath, safe_join
from lmi_runtime.storage.local import TMP_PREFIX, atomic_write

_RANK_DIR = re.compile(r"^rank(\d+)$")
_GROUP = re.compile(r"^(shared|rank\d+|profiles/[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/rank\d+)?)$")
MAX_MANIFEST_BYTES = 64 << 20


def group_of(path: str) -> str:
    """`rank{N}/…` → `rank{N}`; `profiles/<name>/rank{N}/…` → `profiles/<name>/rank{N}`; other files
    of `profiles/<name>/` → `profiles/<name>`; everything else → `shared`."""
    parts = path.split("/")
    if parts[0] == PROFILES_DIR and len(parts) > 2:
        folder = "/".join(parts[:2])
        return f"{folder}/{parts[2]}" if len(parts) > 3 and _RANK_DIR.match(parts[2]) else folder
    return parts[0] if len(parts) > 1 and _RANK_DIR.match(parts[0]) else SHARED_GROUP


def scan_files(root: Path, include_manifest: bool = False) -> list[str]:
    """Every regular file below root (the manifest excluded unless asked), refusing symlinks that leave it."""
    if not root.is_dir():
        raise ArtifactError(f"artifact folder {root} does not exist", hint="check the path")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(TMP_PREFIX)]  # an interrupted download's staging
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if (rel == MANIFEST_NAME and not include_manifest) or name.startswith(TMP_PREFIX):
                continue
            safe_join(root, rel, ArtifactError, "file")  # raises for a symlink out of the root
            if Path(dirpath, name).is_dir():
                raise ArtifactError(f"{rel} is a symlink to a folder", hint="artifacts hold plain files; copy the folder instead")
            found.append(rel)
    return sorted(found)


def file_entries(root: Path, include_manifest: bool = False) -> dict[str, list[FileEntry]]:
    """sha256 + size of every file, grouped per rank (a progress bar for large folders)."""
    paths = scan_files(root, include_manifest)
    full = [safe_join(root, p, ArtifactError, "file") for p in paths]
    digests = hash_files(full, "hashing artifact")
    blocks = block_digests(full, "hashing artifact blocks")
    groups: dict[str, list[FileEntry]] = {}
    for rel, path in zip(paths, full):
        groups.setdefault(group_of(rel), []).append(FileEntry(path=rel, size=path.stat().st_size, sha256=digests[path],
                                                              blocks=blocks[path]))
    return groups


def build_manifest(root: Path, **info) -> Manifest:
    """A manifest for the files in `root`; `info` fills the other fields (model, target, …)."""
    return Manifest(files=file_entries(root), **info)


def manifest_bytes(manifest: Manifest) -> bytes:
    check_manifest_paths(manifest)
    return (manifest.model_dump_json(indent=2, exclude_none=True) + "\n").encode()


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write `lmi-artifact.json` (atomically) after checking every path in it."""
    data = manifest_bytes(manifest)
    atomic_write(root / MANIFEST_NAME, lambda handle: handle.write(data))
    return root / MANIFEST_NAME


def parse_manifest(data: bytes, origin: str) -> Manifest:
    check_format_version(data, origin)
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ArtifactError(f"{origin} is not a valid artifact manifest ({where}: {first['msg']})", hint="re-publish the artifact") from None
    check_manifest_paths(manifest)
    return manifest


def check_format_version(data: bytes, origin: str) -> None:
    """Refuse a manifest whose `format_version` is missing, not an integer (`"1"`, `1.0`, `true`)
    or one this build does not read: its fields may mean something else."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        raise ArtifactError(f"{origin} is not valid JSON", hint="re-publish the artifact") from None
    version = raw.get("format_version", "missing") if isinstance(raw, dict) else "missing"
    if type(version) is not int or version not in READABLE_FORMAT_VERSIONS:
        readable = ", ".join(str(v) for v in sorted(READABLE_FORMAT_VERSIONS))
        raise ArtifactError(
            f"{origin} has format_version {version if version == 'missing' else json.dumps(version)}; "
            f"this build reads format_version {readable}",
            hint="rebuild the artifact with this version of lmi-compile, or serve it with the lmi-serve version that wrote it",
        )


def read_manifest(root: Path) -> Manifest:
    path = safe_join(root, MANIFEST_NAME, ArtifactError, "manifest")  # no symlink out of the artifact
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST_NAME}", hint="is this an artifact folder? A compile stage writes the manifest last")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {path.stat().st_size} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES})", hint="re-publish the artifact")
    return parse_manifest(path.read_bytes(), str(path))


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_manifest_paths(manifest: Manifest) -> None:
    """Group names valid, every path safe, in its own group's folder, and listed once."""
    seen: set[str] = set()
    for group, entries in manifest.files.items():
        if not _GROUP.match(group):
            raise ArtifactError(f"manifest has an unknown file group {group!r}",
                                hint="groups are 'shared', 'rank{N}' and 'profiles/<name>[/rank{N}]'")
        if group != SHARED_GROUP and not any(p.owns(group) for p in manifest.profiles.values()):
            raise ArtifactError(f"manifest has files in {group!r}, which no profile owns", hint="re-build the manifest")
        for entry in entries:
            check_relpath(entry.path, ArtifactError, "manifest path")
            if entry.path == MANIFEST_NAME or entry.path in seen:
                raise ArtifactError(f"manifest lists {entry.path!r} twice (or lists itself)", hint="re-build the manifest")
            if group_of(entry.path) != group:
                raise ArtifactError(f"manifest puts {entry.path!r} in group {group!r}", hint=f"files under rank{{N}}/ belong to group rank{{N}}, the rest to {SHARED_GROUP}")
            seen.add(entry.path)


def verify_folder(root: Path, manifest: Manifest, entries: list[FileEntry] | None = None, allow_extra: bool = False,
                  cache: HashCache | None = None, hash_digests: bool = True, spare_cores: int = 0) -> None:
    """Raise ArtifactError listing every missing, resized, altered or (unless allowed) extra file.
    `hash_digests=False` checks presence, sizes and extras only (lmi-serve --skip-verify);
    `spare_cores`: cores the hashing leaves to a load running beside it."""
    entries = manifest.all_files() if entries is None else entries
    present = set(scan_files(root))
    missing = [e.path for e in entries if e.path not in present]
    resized, candidates = [], []
    for entry in entries:
        if entry.path in present:
            size = safe_join(root, entry.path, ArtifactError, "manifest path").stat().st_size
            if size != entry.size:
                resized.append(f"{entry.path} ({size} bytes, manifest says {entry.size})")
            else:
                candidates.append(entry)
    same = check_files({root / e.path: e.wanted() for e in candidates}, "verifying", cache, spare_cores) if hash_digests else {}
    altered = [e.path for e in candidates if hash_digests and not same[root / e.path]]
    extra = [] if allow_extra else sorted(present - {e.path for e in manifest.all_files()})
    problems = [(missing, "missing"), (resized, "wrong size"), (altered, "sha256 mismatch"), (extra, "not in the manifest")]
    found = [f"{what}: {', '.join(paths)}" for paths, what in problems if paths]
    if found:
        raise ArtifactError(f"{root} does not match its manifest — " + "; ".join(found), hint="rebuild or re-download the artifact; do not edit files after the manifest is written")

