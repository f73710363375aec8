"""sha256 of files, with progress (bytes, rate, ETA) when there is enough data to wait for."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lmi_runtime.progress import progress

CHUNK = 8 << 20
PROGRESS_MIN_BYTES = 32 << 20  # below this, a transfer or hash takes well under a second: no progress


def sha256_file(path: Path, on_chunk=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    return digest.hexdigest()


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n_bytes)`; shows progress only when `total` is worth waiting for."""
    if total < PROGRESS_MIN_BYTES:
        yield lambda n: None
        return
    with progress(transient=True) as shown:  # stderr: stdout keeps the results
        task = shown.task(label, total=total, unit="bytes")
        yield task.advance


def hash_files(paths: list[Path], label: str = "sha256") -> dict[Path, str]:
    """sha256 of many files; hashlib releases the GIL, so a few threads use more than one core."""
    with progress_bar(label, sum(p.stat().st_size for p in paths)) as advance:
        with ThreadPoolExecutor(min(4, max(1, len(paths)))) as pool:
            return dict(zip(paths, pool.map(lambda path: sha256_file(path, advance), paths)))
