"""A local folder as storage: each write goes to a temporary sibling, then os.replace, so a
reader never sees a half-written file."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from lmi_runtime.checksums import hash_files, progress_bar
from lmi_runtime.errors import StorageError
from lmi_runtime.safepath import safe_join
from lmi_runtime.storage.base import Absent, ObjectInfo, Stopwatch, Storage, Transfer, TransferReport

TMP_PREFIX = ".lmi-tmp-"


class LocalStorage(Storage):
    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)

    def _path(self, key: str) -> Path:
        return safe_join(self.root, key, StorageError, "key")

    def list(self) -> dict[str, ObjectInfo]:
        if not self.root.is_dir():
            return {}
        found = {}
        for path in self.root.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.name.startswith(TMP_PREFIX):
                key = path.relative_to(self.root).as_posix()
                found[key] = ObjectInfo(key, path.stat().st_size)
        return found

    def stored_digests(self, keys: Iterable[str]) -> dict[str, str | None]:
        paths = {key: self._path(key) for key in keys}
        digests = hash_files([p for p in paths.values() if p.is_file()], "checking destination")
        return {key: digests.get(path) for key, path in paths.items()}

    def upload(self, transfers: list[Transfer]) -> TransferReport:
        return self._copy([(t.local, self._path(t.key), t) for t in transfers])

    def download(self, transfers: list[Transfer]) -> TransferReport:
        return self._copy([(self._path(t.key), t.local, t) for t in transfers])

    def _copy(self, moves: list[tuple[Path, Path, Transfer]]) -> TransferReport:
        report = TransferReport("local")
        total = sum(t.size for _, _, t in moves)
        with Stopwatch() as watch, progress_bar(f"copying {len(moves)} files", total) as advance:
            for src, dst, transfer in moves:
                if not src.is_file():
                    raise StorageError(f"{src} does not exist", hint="was the source changed during the transfer?")
                atomic_write(dst, lambda handle, src=src: _copy_into(src, handle))
                report.keys.append(transfer.key)
                report.bytes += transfer.size
                advance(transfer.size)
        report.seconds = watch.seconds
        return report

    def get_bytes(self, key: str) -> tuple[bytes, str] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        data = path.read_bytes()
        return data, hashlib.sha256(data).hexdigest()

    def put_bytes(self, key: str, data: bytes, expect: str | Absent | None = None) -> None:
        # Best effort compare-and-swap: local folders have no conditional write, and a
        # folder has one writer in practice (S3 is where concurrent publishers meet).
        current = self.get_bytes(key)
        changed = (current is not None) if isinstance(expect, Absent) else (expect is not None and (current is None or current[1] != expect))
        if changed:
            raise StorageError(
                f"{self._path(key)} changed while this write was prepared",
                hint="another process is writing the same destination; run again when it is done",
            )
        atomic_write(self._path(key), lambda handle: handle.write(data))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _copy_into(src: Path, handle) -> None:
    with open(src, "rb") as source:
        shutil.copyfileobj(source, handle, 8 << 20)


def atomic_write(dst: Path, write) -> None:
    """Write through `write(handle)` into a temporary sibling, then rename over `dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
