"""sha256 of files, with progress (bytes, rate, ETA) when there is enough data to wait for, and a
cache of digests keyed by each file's identity so that a restart does not rehash unchanged files.

A large file also has the sha256 of each BLOCK of it (the manifest's `blocks`): one sha256 runs
at ~0.55 GB/s on the H100 machine's CPU, so checking a 13.5 GB file whole took ~24 s of every
cold start, while its blocks are checked on every core at once (`check_files`)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from lmi_runtime.progress import progress

CHUNK = 8 << 20
BLOCK = 64 << 20  # bytes per block digest
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


def block_count(size: int) -> int:
    return -(-size // BLOCK)


def sha256_range(path: Path, start: int, length: int, on_chunk=None) -> str:
    """sha256 of `length` bytes of the file from `start` (fewer where the file ends)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        at, end = start, start + length
        while at < end and (chunk := os.pread(fd, min(CHUNK, end - at), at)):
            digest.update(chunk)
            at += len(chunk)
            if on_chunk:
                on_chunk(len(chunk))
    finally:
        os.close(fd)
    return digest.hexdigest()


def submit_blocks(pool: ThreadPoolExecutor, path: Path, blocks: range, on_chunk=None) -> list[Future]:
    """The digests of these blocks of the file, each a job of the pool."""
    return [pool.submit(sha256_range, path, i * BLOCK, BLOCK, on_chunk) for i in blocks]


def block_digests(paths: list[Path], label: str = "hashing blocks") -> dict[Path, list[str] | None]:
    """Each file's block digests, on every core; None for a file of one block or less."""
    large = [p for p in paths if p.stat().st_size > BLOCK]
    with progress_bar(label, sum(p.stat().st_size for p in large)) as advance, ThreadPoolExecutor(hashing_threads()) as pool:
        jobs = {p: submit_blocks(pool, p, range(block_count(p.stat().st_size)), advance) for p in large}
        found = {p: [job.result() for job in js] for p, js in jobs.items()}
    return {p: found.get(p) for p in paths}


def check_files(wanted: dict[Path, tuple[str, list[str] | None]], label: str = "verifying",
                cache: "HashCache | None" = None, spare_cores: int = 0) -> dict[Path, bool]:
    """Whether each file holds what `wanted` says (its sha256, and its block digests where
    known; sizes are the caller's check): by the blocks, read on every core at once (but
    `spare_cores`, left to a load running beside), where they are listed, else by the whole
    sha256. A file the `cache` knows unchanged is not read."""
    known = {p: cache.get(p) for p in wanted} if cache is not None else {}
    todo = [p for p in wanted if known.get(p) is None]
    ok: dict[Path, bool] = {}
    with progress_bar(label, sum(p.stat().st_size for p in todo)) as advance, \
            ThreadPoolExecutor(hashing_threads(spare_cores)) as pool:
        by_blocks = {p: submit_blocks(pool, p, range(len(wanted[p][1])), advance) for p in todo if wanted[p][1]}
        whole = {p: pool.submit(sha256_file, p, advance) for p in todo if not wanted[p][1]}
        for p, jobs in by_blocks.items():
            ok[p] = len(jobs) == block_count(p.stat().st_size) and [job.result() for job in jobs] == wanted[p][1]
        for p, job in whole.items():
            ok[p] = job.result() == wanted[p][0]
    if cache is not None and any(ok.values()):
        cache.update({p: wanted[p][0] for p in todo if ok[p]})
    return {p: ok[p] if p in ok else known[p] == wanted[p][0] for p in wanted}


def hashing_threads(spare_cores: int = 0) -> int:
    """Threads for block digests: one a core (hashlib releases the GIL), but `spare_cores`."""
    return max(1, min(32, (os.cpu_count() or 1) - spare_cores))


def hash_files(paths: list[Path], label: str = "sha256", cache: "HashCache | None" = None) -> dict[Path, str]:
    """sha256 of many files; hashlib releases the GIL, so a few threads use more than one core.
    With a `cache`, files whose identity is unchanged since they were last hashed are not read."""
    known = {p: cache.get(p) for p in paths} if cache is not None else {}
    todo = [p for p in paths if known.get(p) is None]
    with progress_bar(label, sum(p.stat().st_size for p in todo)) as advance:
        with ThreadPoolExecutor(min(4, max(1, len(todo)))) as pool:
            fresh = dict(zip(todo, pool.map(lambda path: sha256_file(path, advance), todo)))
    if cache is not None and fresh:
        cache.update(fresh)
    return {p: known.get(p) or fresh[p] for p in paths}


class HashCache:
    """Digests of local files keyed by (real path, size, mtime, ctime, inode), kept in one JSON
    file. Any write to a file changes its mtime and ctime (ctime cannot be set back from user
    space), so a cached digest is reused only for a file nobody touched since it was hashed."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        try:
            loaded = json.loads(path.read_text())
            self._entries: dict[str, dict] = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            self._entries = {}

    @staticmethod
    def _identity(path: Path) -> tuple[str, list[int]]:
        stat = os.stat(path)
        return str(Path(path).resolve()), [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]

    def get(self, path: Path) -> str | None:
        key, identity = self._identity(path)
        entry = self._entries.get(key)
        return entry["sha256"] if isinstance(entry, dict) and entry.get("id") == identity else None

    def update(self, digests: dict[Path, str]) -> None:
        with self._lock:
            for path, digest in digests.items():
                key, identity = self._identity(path)
                self._entries[key] = {"id": identity, "sha256": digest}
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(self._entries))
                os.replace(tmp, self.path)
            except OSError:
                pass  # a read-only cache only costs a rehash next time
