"""Continuous (rolling) batching: a bounded FIFO of waiting requests and at most
`max_batch_size` running ones. Between two decode steps, waiting requests join the batch as
long as a slot and KV-cache room are free; finished ones leave at once."""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable

from lmi_runtime.engine.request import QueueFull, Sequence


class Scheduler:
    def __init__(self, max_batch_size: int, max_queue: int, reserve: Callable[[Sequence], bool]):
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._reserve = reserve
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
                if not self._reserve(self.waiting[0]):
                    break
                seq = self.waiting.popleft()
                self.running.append(seq)
                admitted.append(seq)
        return admitted

    def remove(self, seq: Sequence) -> bool:
        """Take `seq` out wherever it is; True when it was found."""
        with self._lock:
            if seq in self.running:
                self.running.remove(seq)
                return True
            if seq in self.waiting:
                self.waiting.remove(seq)
                return True
            return False

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)
