"""sha256 of files, with a rich progress bar when there is enough data to wait for."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

CHUNK = 8 << 20
PROGRESS_MIN_BYTES = 256 << 20  # below this, hashing takes well under a second: no bar


def sha256_file(path: Path, on_chunk=None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    return digest.hexdigest()


def transfer_progress(transient: bool = True) -> Progress:
    """The bar used for hashing and transfers: bytes done, speed, time left."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), transient=transient,
    )  # fmt: skip


def hash_files(paths: list[Path], label: str = "sha256") -> dict[Path, str]:
    """sha256 of many files; hashlib releases the GIL, so a few threads use more than one core."""
    total = sum(p.stat().st_size for p in paths)
    workers = min(4, max(1, len(paths)))
    if total < PROGRESS_MIN_BYTES:
        with ThreadPoolExecutor(workers) as pool:
            return dict(zip(paths, pool.map(sha256_file, paths)))
    with transfer_progress() as progress:
        task = progress.add_task(label, total=total)

        def one(path: Path) -> str:
            return sha256_file(path, lambda n: progress.advance(task, n))

        with ThreadPoolExecutor(workers) as pool:
            return dict(zip(paths, pool.map(one, paths)))
