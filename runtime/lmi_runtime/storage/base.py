"""The interface every bulk storage backend (local folder, S3) offers.

Keys are POSIX paths relative to the location's root; a backend refuses unsafe keys. Every
object may carry its sha256 (S3: user metadata `sha256`; local: the file's own hash), which
is what lets a publish or download skip files that are already in place, by content.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

SHA256_METADATA = "sha256"
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class Absent:
    """Condition for `put_bytes`: the object must not exist yet (S3 `If-None-Match: *`)."""


ABSENT = Absent()


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    version: str | None = None  # S3 ETag / local content digest; the token for a conditional put


@dataclass(frozen=True)
class Transfer:
    """One file to move: `local` path on this machine, `key` below the storage root."""

    local: Path
    key: str
    size: int
    sha256: str | None = None  # stored with the object on upload


@dataclass
class TransferReport:
    tool: str
    keys: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0

    def add(self, other: TransferReport) -> None:
        self.keys += other.keys
        self.bytes += other.bytes
        self.seconds += other.seconds


class Storage(ABC):
    """A folder-like location holding objects under one root."""

    uri: str

    @abstractmethod
    def list(self) -> dict[str, ObjectInfo]:
        """Every object below the root, by relative key."""

    @abstractmethod
    def stored_digests(self, keys: Iterable[str]) -> dict[str, str | None]:
        """The sha256 each object is known to have (None when unknown)."""

    @abstractmethod
    def upload(self, transfers: list[Transfer]) -> TransferReport: ...

    @abstractmethod
    def download(self, transfers: list[Transfer]) -> TransferReport: ...

    @abstractmethod
    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        """(content, version) of a small object, or None when it does not exist."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, expect: str | Absent | None = None) -> None:
        """Write a small object; `expect` = ABSENT (must not exist) or the version it must still
        have (compare-and-swap), so two publishers cannot silently overwrite each other."""

    @abstractmethod
    def delete(self, key: str) -> None: ...


def redact(text: str) -> str:
    """Remove credential values that are set in the environment from a message or command."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
