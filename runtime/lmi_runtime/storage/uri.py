"""Parse a storage location: `s3://bucket/prefix`, a local folder (`/path`, `./path`,
`file:///path`) or a Hugging Face hub repository (`hf://org/name` or plain `org/name`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lmi_runtime.errors import StorageError

Kind = Literal["s3", "local", "hub"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Location:
    kind: Kind
    uri: str
    bucket: str = ""  # s3
    prefix: str = ""  # s3: key prefix without trailing '/'
    path: Path | None = None  # local
    repo_id: str = ""  # hub

    def child(self, name: str) -> str:
        """URI of `name` below this location (s3 and local only)."""
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}{name}"
        return str(self.path / name)


def parse_uri(uri: str, *, hub: bool = False) -> Location:
    """Classify `uri`. A bare `org/name` means the hub only when `hub` is set and no local
    folder of that name exists (fetch allows the hub; publish destinations do not)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        if not _BUCKET.match(bucket):
            raise StorageError(
                f"invalid S3 bucket name {bucket!r} in {uri!r}",
                hint="use s3://BUCKET/PREFIX with a valid bucket name (3-63 lowercase letters, digits, '.', '-')",
            )
        return Location("s3", uri, bucket=bucket, prefix=prefix.strip("/"))
    if uri.startswith("hf://"):
        return _hub(uri, uri[5:])
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0]
        raise StorageError(
            f"unsupported storage scheme {scheme!r} in {uri!r}",
            hint="use s3://bucket/prefix, a local folder, or a Hugging Face repo id (org/name)",
        )
    path = Path(uri[7:] if uri.startswith("file://") else uri).expanduser()
    looks_local = uri.startswith(("/", ".", "~", "file://")) or path.exists()
    if hub and not looks_local and _HUB_ID.match(uri):
        return _hub(uri, uri)
    return Location("local", uri, path=path.absolute())


def _hub(uri: str, repo_id: str) -> Location:
    if not _HUB_ID.match(repo_id):
        raise StorageError(f"invalid Hugging Face repo id {repo_id!r}", hint="use org/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    return Location("hub", uri, repo_id=repo_id)
