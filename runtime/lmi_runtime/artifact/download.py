"""Download a published artifact: the manifest first (no manifest = not published), then only
the files this process needs (shared + its rank), each verified against the manifest."""

from __future__ import annotations

import re
from pathlib import Path

from lmi_runtime.artifact.folder import parse_manifest
from lmi_runtime.artifact.manifest import MANIFEST_NAME, Manifest, rank_group
from lmi_runtime.artifact.transfer import pull
from lmi_runtime.errors import ArtifactError
from lmi_runtime.storage import open_storage
from lmi_runtime.storage.local import atomic_write


def download_artifact(uri: str, dest: Path, rank: int | None = None, s3_options=None) -> Manifest:
    """Fetch the artifact at `uri` into `dest` (all ranks when `rank` is None) and return its
    manifest, written to `dest` last so a half download never looks complete."""
    storage = open_storage(uri, s3_options)
    found = storage.get_bytes(MANIFEST_NAME)
    if found is None:
        raise ArtifactError(
            f"{uri} has no {MANIFEST_NAME}",
            hint="nothing was published there, or a publish is still running (the manifest is written last)",
        )
    manifest = parse_manifest(found[0], f"{uri}/{MANIFEST_NAME}")
    if rank is None:
        entries = manifest.all_files()
    else:
        ranks = sorted(int(g[4:]) for g in manifest.files if re.fullmatch(r"rank\d+", g))
        if ranks and rank_group(rank) not in manifest.files:
            raise ArtifactError(f"{uri} has no files for rank {rank} (it has ranks {ranks})", hint="start as many ranks as the artifact was built for")
        entries = manifest.group_for_rank(rank)
    pull(storage, entries, dest)
    atomic_write(dest / MANIFEST_NAME, lambda handle: handle.write(found[0]))
    return manifest
