"""publish: a verified artifact folder → a local folder or `s3://bucket/prefix`.

The local artifact is checked against its manifest first (nothing tampered, nothing extra),
then data goes up and the manifest last, so readers (who look for the manifest) never see a
half-published artifact. Files already at the destination with the same size and sha256 are
not sent again: an unchanged artifact transfers nothing and an interrupted publish resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmi_runtime.artifact.folder import digest_of, read_manifest, scan_files, verify_folder
from lmi_runtime.artifact.manifest import MANIFEST_NAME
from lmi_runtime.artifact.transfer import push
from lmi_runtime.storage.base import Absent
from lmi_runtime.errors import ConfigError
from lmi_runtime.storage import open_storage, parse_uri


@dataclass(frozen=True)
class ArtifactRef:
    """Where an artifact was published and what this run did."""

    uri: str
    manifest_sha256: str
    sent: list[str]
    skipped: list[str]
    bytes_sent: int
    seconds: float
    tool: str


def publish(artifact_dir: Path, dest: str, s3_options=None, local_only: bool = False,
            based_on: str | Absent | None = None) -> ArtifactRef:
    """`local_only`: the manifest also lists files already published (a profile added to an
    artifact): verify and send only the ones in `artifact_dir`. `based_on`: the version of the
    destination's manifest this one merged (ABSENT: there was none); a run that published
    there since is not overwritten."""
    artifact_dir = artifact_dir.expanduser().absolute()
    manifest = read_manifest(artifact_dir)
    entries = manifest.all_files()
    if local_only:
        present = set(scan_files(artifact_dir))
        entries = [e for e in entries if e.path in present]
    verify_folder(artifact_dir, manifest, entries)
    location = parse_uri(dest)
    _refuse_overlap(artifact_dir, location.path if location.kind == "local" else None, dest)
    data = (artifact_dir / MANIFEST_NAME).read_bytes()
    report = push(artifact_dir, entries, open_storage(location, s3_options), MANIFEST_NAME, data, based_on)
    return ArtifactRef(
        uri=location.uri, manifest_sha256=digest_of(data), sent=report.sent.keys, skipped=report.skipped,
        bytes_sent=report.sent.bytes, seconds=report.sent.seconds, tool=report.sent.tool,
    )  # fmt: skip


def _refuse_overlap(source: Path, dest: Path | None, shown: str) -> None:
    """Publishing into the artifact itself (or a folder holding it) would nest it in itself."""
    if dest is None:
        return
    src, out = source.resolve(), dest.resolve()
    if out == src:
        raise ConfigError(f"the destination {shown} is the artifact folder itself", hint="publish to another folder or an s3:// prefix")
    if out.is_relative_to(src) or src.is_relative_to(out):
        where = "inside the artifact folder" if out.is_relative_to(src) else "a folder that holds the artifact"
        raise ConfigError(f"the destination {shown} is {where} {source}",
                          hint="publish to a folder outside the artifact (or an s3:// prefix); the two must not overlap")
