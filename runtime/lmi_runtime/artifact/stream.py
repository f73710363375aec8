"""Weights read while they download: a cold start from `s3://` takes about max(download, load)
instead of their sum.

`stream_artifact` fetches the small files (config, tokenizer, ...) and the manifest, then only
starts the weights: each file is written front to back into its place in the serve cache
(`S3Storage.stream_to`: `s5cmd cat`, which fetches parts in parallel and writes them in order),
one file after the other in the order the loader reads them, each tensor-parallel rank's in a
thread of its own (its loader reads them at the same time). The loader follows each file as
it grows (`staged_read.Growing`): it reads a piece as soon as that piece has landed; a worker
process (ranks 1..N-1) follows its files through a `Follower`, since the downloads are rank 0's.

An `Arrival` watches its file: it publishes how many bytes have landed and checks them on the
way (each block on its own core as it lands, where the manifest lists blocks), so the file is
verified soon after its last byte lands, with no extra pass. A file whose
download fails, that grows past its size or does not match the manifest is deleted, and the
error reaches every reader and `wait_verified`: the server never turns ready on it, and the
next start downloads it again (a file left behind by a crash has the wrong size or digest and
is fetched again too, since every start checks the cached files against the manifest).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from lmi_runtime.artifact.download import wanted_files
from lmi_runtime.artifact.manifest import MANIFEST_NAME, FileEntry, Manifest
from lmi_runtime.artifact.transfer import missing, pull
from lmi_runtime.checksums import BLOCK, HashCache, block_count, hashing_threads, progress_bar, submit_blocks
from lmi_runtime.errors import ArtifactError
from lmi_runtime.storage import open_storage
from lmi_runtime.storage.local import atomic_write

log = logging.getLogger("lmi.artifact.stream")
HASH_CHUNK = 16 * 2**20  # bytes hashed per read of the growing file
POLL_S = 0.005  # how often a watcher looks at a file that is not growing


class Arrival:
    """One weights file downloading into `path`; readers wait for the bytes they need. What an
    earlier start left at `path` is deleted now: its bytes must not pass for landed ones, here or
    in a worker process that follows the file."""

    def __init__(self, path: Path, entry: FileEntry):
        self.path, self.size, self.name, self.sha256, self.blocks = path, entry.size, entry.path, entry.sha256, entry.blocks
        path.unlink(missing_ok=True)
        self._landed = 0
        self._finished = False
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    def wait(self, end: int) -> None:
        """Return once bytes [0, end) are in the file; raise the download's error if it failed."""
        with self._changed:
            self._changed.wait_for(lambda: self._landed >= end or self._error is not None)
            if self._error is not None:
                raise self._error

    def wait_verified(self) -> None:
        """Return once the whole file has landed and matches the manifest; raise what failed."""
        with self._changed:
            self._changed.wait_for(lambda: self._finished)
            if self._error is not None:
                raise self._error

    def follow(self, download: Callable[[], None], advance: Callable[[int], None]) -> None:
        """Run `download` (it writes the file front to back) and watch the file as it grows."""
        failed: list[BaseException] = []
        writer = threading.Thread(target=_catch, args=(download, failed), name=f"lmi-download-{self.path.name}",
                                  daemon=True)
        writer.start()
        try:
            self._watch(writer, failed, advance)
        except BaseException as err:  # noqa: BLE001 - handed to every reader of this file
            self.fail(err)
        else:
            self._publish(finished=True)

    def fail(self, error: BaseException) -> None:
        """Give up on this file: delete what landed, and raise `error` to its readers."""
        self.path.unlink(missing_ok=True)
        self._publish(error=error)

    def _watch(self, writer: threading.Thread, failed: list[BaseException], advance: Callable[[int], None]) -> None:
        """Publish the landed bytes; check them as they land: each block on its own core where the
        manifest lists blocks, else one sha256 of the whole file, in order."""
        digest, hashed, fd, checks = hashlib.sha256(), 0, None, []
        pool = ThreadPoolExecutor(hashing_threads(spare_cores=1)) if self.blocks else None  # a core for the loader
        try:
            while True:
                running = writer.is_alive()  # read first: bytes written before it ended are seen below
                if fd is None and self.path.exists():
                    fd = os.open(self.path, os.O_RDONLY)
                size = os.fstat(fd).st_size if fd is not None else 0
                if size > self.size:
                    raise ArtifactError(f"{self.name}: the download is larger than the manifest's {self.size} bytes",
                                        hint="the stored object was changed after publishing: publish the artifact again")
                if size > self._landed:
                    self._publish(landed=size)
                if pool is not None:
                    whole_blocks = block_count(self.size) if size >= self.size else size // BLOCK  # landed
                    checks += submit_blocks(pool, self.path, range(len(checks), whole_blocks), advance)
                    if not running:
                        break
                elif hashed < size:
                    piece = os.pread(fd, min(HASH_CHUNK, size - hashed), hashed)
                    digest.update(piece)
                    hashed += len(piece)
                    advance(len(piece))
                    continue
                elif not running:
                    break
                time.sleep(POLL_S)
            found = [check.result() for check in checks]
        finally:
            if fd is not None:
                os.close(fd)
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        if failed:
            raise failed[0]
        if self._landed != self.size:
            raise ArtifactError(f"{self.name}: the download ended after {self._landed} of {self.size} bytes",
                                hint="the stored object is shorter than the manifest says: publish the artifact again")
        if found != (self.blocks or []) or (pool is None and digest.hexdigest() != self.sha256):
            raise ArtifactError(f"{self.name}: downloaded, but its sha256 does not match the manifest's",
                                hint="the stored object is corrupt or was changed after publishing: publish the artifact again")

    def _publish(self, landed: int | None = None, error: BaseException | None = None, finished: bool = False) -> None:
        with self._changed:
            if landed is not None:
                self._landed = landed
            if error is not None:
                self._error, self._finished = error, True
            self._finished = self._finished or finished
            self._changed.notify_all()


def _catch(fn: Callable[[], None], failed: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - re-raised by the watcher
        failed.append(err)


class Follower:
    """A weights file rank 0's `Arrival` downloads, followed from a tensor-parallel worker
    process: its bytes are there once the file is that long (`Arrival` deletes any earlier copy
    before the worker starts). Checking them is rank 0's: the server turns ready only once every
    rank's files match the manifest. The wait gives up when rank 0 does (`abandoned`: it has
    written to the worker's pipe or closed it) or the file, once there, disappears (a failed
    download is deleted)."""

    def __init__(self, path: Path, name: str, size: int, abandoned: Callable[[], bool]):
        self.path, self.name, self.size, self._abandoned = path, name, size, abandoned
        self._seen = self._waited = False

    def wait(self, end: int) -> None:
        while True:
            try:
                landed = self.path.stat().st_size
            except FileNotFoundError:
                if self._seen:
                    raise ArtifactError(f"{self.name}: rank 0's download of it failed (its log says why)") from None
            else:
                self._seen = True
                if landed >= end:
                    return
            if self._abandoned():
                raise ArtifactError(f"{self.name}: rank 0 stopped the start while it was downloading")
            if not self._waited:
                log.info("%s is still downloading (rank 0 fetches it): reading it as it lands", self.name)
                self._waited = True
            time.sleep(POLL_S)

    def wait_verified(self) -> None:
        """Return once the whole file is there (rank 0 checks its digest)."""
        self.wait(self.size)


def stream_artifact(uri: str, manifest: Manifest, manifest_bytes: bytes, dest: Path, profile: str,
                    s3_options=None, cache: HashCache | None = None) -> dict[str, Arrival]:
    """Every rank of `profile` into `dest`: the small files now, the weights started in the
    background; returns the weights still arriving, by manifest path (files already in `dest`
    with the right content are not fetched again). The manifest is written before the weights
    land, since the loader reads it; the weights are checked by their arrivals."""
    storage = open_storage(uri, s3_options)
    entries = wanted_files(uri, manifest, None, profile)
    weights = [e for e in entries if e.path.endswith(".safetensors")]
    pull(storage, [e for e in entries if e not in weights], dest)
    targets, todo = missing(weights, dest, cache)
    arrivals = {e.path: Arrival(targets[e.path], e) for e in sorted(todo, key=lambda e: e.path)}
    atomic_write(dest / MANIFEST_NAME, lambda handle: handle.write(manifest_bytes))
    if arrivals:
        chosen, pending = manifest.only(profile), dict(arrivals)
        by_rank = [[pending.pop(e.path) for e in sorted(chosen.group_for_rank(rank), key=lambda e: e.path) if e.path in pending]
                   for rank in range(chosen.target.tp_degree)]
        threading.Thread(target=_fetch, args=(storage, by_rank, cache), name="lmi-stream", daemon=True).start()
    return arrivals


def _fetch(storage, by_rank: list[list[Arrival]], cache: HashCache | None) -> None:
    """Each rank's files in a thread of its own, one after the other in the order its loader
    reads them."""
    started, failed = time.perf_counter(), []
    everything = [a for queue in by_rank for a in queue]
    with progress_bar(f"downloading {len(everything)} weight files", sum(a.size for a in everything)) as advance:
        threads = [threading.Thread(target=_fetch_queue, args=(storage, queue, advance, cache, failed),
                                    name=f"lmi-stream-{rank}", daemon=True) for rank, queue in enumerate(by_rank) if queue]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failed:  # the readers raise the error
        return
    seconds = time.perf_counter() - started
    log.info("downloaded %d weight files (%.2f GB) in %.1f s while loading", len(everything),
             sum(a.size for a in everything) / 1e9, seconds)


def _fetch_queue(storage, queue: list[Arrival], advance: Callable[[int], None], cache: HashCache | None,
                 failed: list[Arrival]) -> None:
    for arrival in queue:
        arrival.follow(lambda a=arrival: storage.stream_to(a.name, a.path), advance)
        try:
            arrival.wait_verified()
        except BaseException:  # noqa: BLE001 - the readers raise it; the files after it are not needed
            failed.append(arrival)
            for later in queue[queue.index(arrival) + 1:]:
                later.fail(ArtifactError(f"{later.name}: not downloaded, since {arrival.name} failed"))
            return
        if cache is not None:
            cache.update({arrival.path: arrival.sha256})
