"""Move a checksummed file set to or from storage, with a marker object (the manifest) that
says "complete": push writes data first and the marker last; pull reads the marker first.

Resume and no-op re-publish work by content, not by s5cmd sync's size+mtime: every uploaded
object carries its sha256 as user metadata (`x-amz-meta-sha256`), so a file whose remote copy
has the same size and the same stored sha256 is not sent again. We chose that over ETags
because a multipart ETag depends on the uploader's part size and is not a content hash; an
S3 object only becomes visible once its upload completes, so an object that is listed with
its metadata is whole. Readers verify every byte against the manifest anyway.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lmi_runtime.artifact.manifest import FileEntry
from lmi_runtime.checksums import HashCache, check_files
from lmi_runtime.errors import ArtifactError, StorageError
from lmi_runtime.safepath import safe_join
from lmi_runtime.storage.base import ABSENT, Absent, Storage, Transfer, TransferReport
from lmi_runtime.storage.local import TMP_PREFIX

log = logging.getLogger("lmi.artifact.transfer")


@dataclass
class PushReport:
    uri: str
    sent: TransferReport
    skipped: list[str] = field(default_factory=list)  # already there with the same size and sha256
    marker_written: bool = False


def push(root: Path, entries: list[FileEntry], storage: Storage, marker_key: str, marker: bytes,
         based_on: str | Absent | None = None) -> PushReport:
    """Upload the files of `entries` that are not already there by content, then the marker.
    `based_on`: the version of the marker this one was built from (ABSENT: none was there);
    if another writer has replaced it since, nothing is sent, so its work is not lost."""
    remote = storage.list()
    current = storage.get_bytes(marker_key)
    unchanged = current is None if isinstance(based_on, Absent) else current is not None and current[1] == based_on
    if based_on is not None and not unchanged:
        raise StorageError(
            f"{storage.uri}: {marker_key} changed while this run prepared its own (another run published there)",
            hint="run again: it adds to what is there now, and the stage cache makes it quick")
    same_size = [e.path for e in entries if e.path in remote and remote[e.path].size == e.size]
    stored = storage.stored_digests(same_size)
    todo = [e for e in entries if stored.get(e.path) != e.sha256]
    report = PushReport(storage.uri, TransferReport("none"), [e.path for e in entries if stored.get(e.path) == e.sha256])
    if current is not None and current[0] == marker and not todo:
        return report  # unchanged: nothing to send, not even the marker
    expect = ABSENT if current is None else current[1]
    if todo and current is not None:
        # Take the old marker down before changing data it describes: a reader then finds
        # "no artifact" for a moment instead of an old manifest over new files.
        storage.delete(marker_key)
        expect = ABSENT
    transfers = [Transfer(safe_join(root, e.path, ArtifactError, "file"), e.path, e.size, e.sha256) for e in todo]
    report.sent = storage.upload(transfers) if transfers else report.sent
    after = storage.list()
    if short := [e.path for e in todo if e.path not in after or after[e.path].size != e.size]:
        raise StorageError(f"after the upload, {storage.uri} lacks or has wrong sizes for: {', '.join(short)}", hint="run the publish again")
    storage.put_bytes(marker_key, marker, expect=expect)
    report.marker_written = True
    return report


def missing(entries: list[FileEntry], dest: Path, cache: HashCache | None = None) -> tuple[dict[str, Path], list[FileEntry]]:
    """Where each entry goes in `dest`, and the entries not already there with the right content."""
    dest.mkdir(parents=True, exist_ok=True)
    targets = {e.path: safe_join(dest, e.path, ArtifactError, "manifest path") for e in entries}
    present = [e for e in entries if targets[e.path].is_file() and targets[e.path].stat().st_size == e.size]
    same = check_files({targets[e.path]: e.wanted() for e in present}, "checking local files", cache)
    return targets, [e for e in entries if not same.get(targets[e.path])]


def pull(storage: Storage, entries: list[FileEntry], dest: Path) -> TransferReport:
    """Download `entries` into `dest`, verifying each against its sha256 and size.

    Files already in `dest` with the right content are kept; new files land in a staging
    folder inside `dest` and are moved into place only once verified.
    """
    targets, todo = missing(entries, dest)
    if not todo:
        return TransferReport("none")
    staging = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}partial-", dir=dest))
    try:
        transfers = [Transfer(safe_join(staging, e.path, ArtifactError, "manifest path"), e.path, e.size, e.sha256) for e in todo]
        report = storage.download(transfers)
        landed = [(e, t) for e, t in zip(todo, transfers) if t.local.is_file() and t.local.stat().st_size == e.size]
        same = check_files({t.local: e.wanted() for e, t in landed}, "verifying download")
        bad = [f"{e.path} ({'content differs' if t.local in same else 'missing or wrong size'})"
               for e, t in zip(todo, transfers) if not same.get(t.local)]
        if bad:
            raise ArtifactError(
                f"{len(bad)} downloaded file(s) from {storage.uri} do not match the manifest: {', '.join(bad)}",
                hint="the stored objects are corrupt or were changed after publishing: publish the artifact again",
            )
        for e, t in zip(todo, transfers):
            targets[e.path].parent.mkdir(parents=True, exist_ok=True)
            os.replace(t.local, targets[e.path])
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)
