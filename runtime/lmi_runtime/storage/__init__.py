"""The storage layer both sides share: local folders, S3 (s5cmd + boto3), the Hugging Face hub."""

from __future__ import annotations

from lmi_runtime.errors import StorageError
from lmi_runtime.storage.base import ABSENT, ObjectInfo, Storage, Transfer, TransferReport
from lmi_runtime.storage.uri import Location, parse_uri

__all__ = ["ABSENT", "Location", "ObjectInfo", "Storage", "Transfer", "TransferReport", "open_storage", "parse_uri"]


def open_storage(uri: str | Location, s3_options=None) -> Storage:
    """A bulk storage backend for a local folder or an `s3://bucket/prefix` location."""
    location = uri if isinstance(uri, Location) else parse_uri(uri)
    if location.kind == "s3":
        from lmi_runtime.storage.s3 import S3Storage

        return S3Storage(location, s3_options)
    if location.kind == "local":
        from lmi_runtime.storage.local import LocalStorage

        return LocalStorage(location.path)
    raise StorageError(
        f"{location.uri} is a Hugging Face repository, not a folder or S3 prefix",
        hint="the hub is a model source only (lmi-compile fetch); publish to a folder or s3://",
    )
