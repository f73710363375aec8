"""Continuous (rolling) batching: a bounded FIFO of waiting requests and at most
`max_batch_size` running ones. Between two decode steps, waiting requests join the batch as
long as a slot and KV-cache room (asked of the KV-cache manager) are free; finished ones leave
at once and give their room back."""

from __future__ import annotations

import threading
from collections import deque

from lmi_runtime.engine.kv_cache import KVCacheManager
from lmi_runtime.engine.request import QueueFull, Sequence


class Scheduler:
    def __init__(self, max_batch_size: int, max_queue: int, kv: KVCacheManager):
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._lock = threading.Lock()  # add() comes from the HTTP thread, the rest from the engine's

    def add(self, seq: Sequence) -> None:
        with self._lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(self.max_queue)
            self.waiting.append(seq)

    def admit(self) -> list[Sequence]:
        """Move waiting sequences into the running batch (FIFO; stops at the first that does
        not fit, so a long request is not starved by short ones behind it)."""
        admitted = []
        with self._lock:
            while self.waiting and len(self.running) < self.max_batch_size:
                if not self.kv.reserve(self.waiting[0]):
                    break
                seq = self.waiting.popleft()
                self.running.append(seq)
                admitted.append(seq)
        return admitted

    def remove(self, seq: Sequence) -> bool:
        """Take `seq` out wherever it is and free its KV-cache room; True when it was found."""
        with self._lock:
            found = True
            if seq in self.running:
                self.running.remove(seq)
            elif seq in self.waiting:
                self.waiting.remove(seq)
            else:
                found = False
        self.kv.free(seq)
        return found

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)
