"""Continuous (rolling) batching: a bounded FIFO of waiting requests and at most
`max_batch_size` running ones. Between two decode steps, waiting requests join the batch as
long as a slot and KV-cache room (asked of the KV-cache manager) are free and, under a prompt
budget, as long as the step's prompt tokens stay within it: every sequence admitted is prefilled
in that step, so a burst of long prompts would otherwise hold every running stream until the
whole burst is prefilled; with a budget it joins over several steps, a decode step between each.
Finished sequences leave at once and give their room back."""

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

    def admit(self, prompt_budget: int | None = None) -> list[Sequence]:
        """Move waiting sequences into the running batch (FIFO; stops at the first that does
        not fit, so a long request is not starved by short ones behind it). `prompt_budget`:
        the most prompt tokens this step prefills (None: no limit); the first sequence is
        admitted whatever its length, so a prompt longer than the budget still gets its turn."""
        admitted: list[Sequence] = []
        spent = 0
        with self._lock:
            while self.waiting and len(self.running) < self.max_batch_size:
                seq = self.waiting[0]
                cost = _prompt_cost(seq, admitted)
                if admitted and prompt_budget is not None and spent + cost > prompt_budget:
                    break
                if not self.kv.reserve(seq):
                    break
                self.waiting.popleft()
                self.running.append(seq)
                admitted.append(seq)
                spent += cost
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


def _prompt_cost(seq: Sequence, admitted: list[Sequence]) -> int:
    """Tokens the step prefills for `seq`: what `Backend.prefill` runs (its token list), or none
    for an extra sample whose first sample joins in the same step (it shares that prefill)."""
    if seq.fork_of is not None and any(s is seq.fork_of for s in admitted):
        return 0
    return len(seq.token_ids)
