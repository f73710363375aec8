"""Safetensors files read onto a GPU through pinned staging buffers, by several threads at once.

Why: `safetensors.load_file(device="cuda")` copies one tensor at a time out of the memory map
with pageable copies, which ran at about 2.5 GB/s on the H100 (`scripts/bench_load.py`). Here
each thread reads its next piece of the file with `os.preadv` into one of its two pinned
buffers (the read releases the GIL, so threads overlap) while its last piece is copied to the
GPU asynchronously on the thread's own stream. Every tensor gets its own allocation (not views
into one per-file buffer, as fastsafetensors does), so fusing and freeing a layer's parts
during the load returns their memory.

The header is checked before anything is allocated: a malformed or truncated file is a
`ModelFolderError` naming it, not a crash halfway through the load.

A file may still be downloading (`artifact.stream`): given its `Growing` handle, each read
first waits until the bytes it needs have landed, so loading follows the download.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol

import torch

from lmi_runtime.errors import ModelFolderError

CHUNK = 32 * 2**20  # bytes per staging buffer: large enough to amortize a copy's launch
MAX_HEADER = 100 * 2**20  # what safetensors itself accepts
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
HINT = "the file is damaged or not safetensors: download or rebuild the model folder (lmi-serve verifies an artifact's checksums)"


class Growing(Protocol):
    """A file being written front to back (`artifact.stream.Arrival`)."""

    size: int  # its size once complete

    def wait(self, end: int) -> None:
        """Return once bytes [0, end) are in the file; raise the download's error if it failed."""


@dataclass(frozen=True)
class Entry:
    """One tensor of a file: where its bytes lie (absolute offsets) and what they are."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def header(path: Path, growing: Growing | None = None) -> tuple[list[Entry], dict[str, str]]:
    """The tensors a safetensors file declares, checked against the file's size, and its metadata."""
    size = growing.size if growing is not None else path.stat().st_size
    if growing is not None:
        growing.wait(min(8, size))
    with path.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= min(MAX_HEADER, size - 8):
            raise ModelFolderError(f"{path.name}: no valid safetensors header (length {length}, file {size} bytes)",
                                   hint=HINT)
        if growing is not None:
            growing.wait(8 + length)
        try:
            table = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFolderError(f"{path.name}: its safetensors header is not JSON ({err})", hint=HINT) from err
    if not isinstance(table, dict):
        raise ModelFolderError(f"{path.name}: its safetensors header is not a mapping", hint=HINT)
    metadata = table.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise ModelFolderError(f"{path.name}: its safetensors metadata is not a mapping", hint=HINT)
    base, found = 8 + length, []
    for name, info in table.items():
        try:
            dtype, shape, (start, end) = DTYPES[info["dtype"]], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFolderError(f"{path.name}: tensor {name!r} is described wrongly ({err!r})", hint=HINT) from err
        count = 1
        for dim in shape:
            count *= dim
        if min(shape, default=0) < 0 or not 0 <= start <= end or base + end > size \
                or end - start != count * dtype.itemsize:
            raise ModelFolderError(f"{path.name}: tensor {name!r} ({info['dtype']} {list(shape)}, bytes {start}..{end}) "
                                   f"does not fit the file ({size} bytes)", hint=HINT)
        found.append(Entry(name, dtype, shape, base + start, base + end))
    return found, metadata


def entries(path: Path, growing: Growing | None = None) -> list[Entry]:
    """The tensors a safetensors file declares, checked against the file's size."""
    return header(path, growing)[0]


class StagedReader:
    """Reads files onto `device` with `threads` workers; on a GPU each owns two pinned staging
    buffers and a stream (allocated once: the reader serves several files), on the CPU each reads
    straight into the tensors."""

    def __init__(self, device: torch.device, threads: int | None = None, chunk: int = CHUNK):
        self.device, self.chunk = device, chunk
        self.threads = threads or min(8, os.cpu_count() or 1)
        staging = 2 if device.type == "cuda" else 0  # on the CPU, reads go straight into the tensors
        self.buffers = [[torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(staging)]
                        for _ in range(self.threads)]

    def read(self, path: Path, growing: Growing | None = None) -> dict[str, torch.Tensor]:
        listed = entries(path, growing)
        tensors = {e.name: torch.empty(e.shape, dtype=e.dtype, device=self.device) for e in listed}
        pieces = [(tensors[e.name], at - e.start, at, min(self.chunk, e.end - at))
                  for e in listed for at in range(e.start, e.end, self.chunk)]
        next_piece = iter(pieces)
        lock = threading.Lock()
        fd = os.open(path, os.O_RDONLY)
        try:
            with ThreadPoolExecutor(self.threads) as pool:
                for done in [pool.submit(self._worker, fd, path, next_piece, lock, bufs, growing) for bufs in self.buffers]:
                    done.result()
        finally:
            os.close(fd)
        return tensors

    def _worker(self, fd: int, path: Path, pieces, lock: threading.Lock, buffers: list[torch.Tensor],
                growing: Growing | None) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        pending: list[torch.cuda.Event | None] = [None, None]
        turn = 0
        while True:
            with lock:
                piece = next(pieces, None)
            if piece is None:
                break
            tensor, into, at, size = piece
            if growing is not None:
                growing.wait(at + size)
            target = tensor.view(-1).view(torch.uint8)[into:into + size]
            if not cuda:
                _pread_into(fd, path, target, at)
                continue
            slot = turn % 2
            if pending[slot] is not None:
                pending[slot].synchronize()  # that buffer's last copy has left it
            staged = buffers[slot][:size]
            _pread_into(fd, path, staged, at)
            with torch.cuda.stream(stream):
                target.copy_(staged, non_blocking=True)
                pending[slot] = torch.cuda.Event()
                pending[slot].record(stream)
            turn += 1
        if stream is not None:
            stream.synchronize()


def _pread_into(fd: int, path: Path, dest: torch.Tensor, at: int) -> None:
    """Fill the bytes of `dest` (contiguous, on the CPU) from the file at offset `at`."""
    view, got = memoryview(dest.numpy()), 0
    while got < len(view):
        step = os.preadv(fd, [view[got:]], at + got)
        if step == 0:
            raise ModelFolderError(f"{path.name} ended while reading {len(view)} bytes at {at}", hint=HINT)
        got += step


def read_mapped(paths: list[Path], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of the files through their memory maps (`safetensors.load_file`)."""
    from safetensors.torch import load_file

    return {name: t for path in paths for name, t in load_file(str(path), device=str(device)).items()}


def read_weights(paths: list[Path], device: torch.device, growing: Mapping[Path, Growing] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors files on `device`: on the CPU from the memory maps (a
    single copy there already); staged on a GPU, and wherever files are still downloading,
    since the staged reader follows them as they grow."""
    growing = growing or {}
    if device.type != "cuda" and not growing:
        return read_mapped(paths, device)
    reader = StagedReader(device)
    return {name: tensor for path in paths for name, tensor in reader.read(path, growing.get(path)).items()}
