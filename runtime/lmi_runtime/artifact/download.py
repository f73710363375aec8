"""Download a published artifact: the manifest first (no manifest = not published), then only
the files this process needs (shared + one profile's, of its rank), each verified against the
manifest."""

from __future__ import annotations

import re
from pathlib import Path

from lmi_runtime.artifact.folder import parse_manifest
from lmi_runtime.artifact.manifest import MANIFEST_NAME, FileEntry, Manifest, rank_group
from lmi_runtime.artifact.transfer import pull
from lmi_runtime.errors import ArtifactError
from lmi_runtime.storage import open_storage
from lmi_runtime.storage.local import atomic_write

_RANK = re.compile(r"(?:^|/)rank(\d+)$")


def fetch_manifest(uri: str, s3_options=None) -> tuple[Manifest, bytes]:
    """The published manifest, parsed, and its bytes."""
    found = open_storage(uri, s3_options).get_bytes(MANIFEST_NAME)
    if found is None:
        raise ArtifactError(
            f"{uri} has no {MANIFEST_NAME}",
            hint="nothing was published there, or a publish is still running (the manifest is written last)",
        )
    return parse_manifest(found[0], f"{uri}/{MANIFEST_NAME}"), found[0]


def download_artifact(uri: str, dest: Path, rank: int | None = None, s3_options=None,
                      profile: str | None = None) -> Manifest:
    """Fetch the artifact at `uri` into `dest` (all ranks when `rank` is None; one profile's
    files and the shared ones when `profile` is given, else every profile's) and return its
    manifest, written to `dest` last so a half download never looks complete."""
    storage = open_storage(uri, s3_options)
    manifest, data = fetch_manifest(uri, s3_options)
    pull(storage, wanted_files(uri, manifest, rank, profile), dest)
    atomic_write(dest / MANIFEST_NAME, lambda handle: handle.write(data))
    return manifest


def wanted_files(uri: str, manifest: Manifest, rank: int | None, profile: str | None) -> list[FileEntry]:
    """The files a download fetches: one profile's and the shared ones (every profile's when
    `profile` is None), of one rank (all ranks when `rank` is None)."""
    wanted = manifest.only(profile) if profile is not None else manifest
    if rank is None:
        return wanted.all_files()
    folder = wanted.profile.folder
    ranks = sorted(int(m.group(1)) for g in wanted.files if (m := _RANK.search(g)))
    if ranks and rank_group(rank, folder) not in wanted.files:
        raise ArtifactError(f"{uri} has no files for rank {rank} (it has ranks {ranks})", hint="start as many ranks as the artifact was built for")
    return wanted.group_for_rank(rank)
