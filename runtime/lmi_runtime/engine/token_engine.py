"""The engine for backends that pick tokens themselves (TensorRT-LLM's in-flight batching,
Neuron's on-device sampling): our queue limits, scheduler, detokenizer, stop sequences, metrics
and HTTP API stay as they are; only "forward + sample" is replaced by the backend's tokens.
Admission takes no prompt budget (`max_prefill_tokens`): the libraries bound their own prompt
steps (TensorRT-LLM's max_num_tokens is built into its engine, Neuron's context encoding runs
a compiled shape)."""

from __future__ import annotations

from abc import abstractmethod
from typing import NamedTuple

import torch

from lmi_runtime.engine.backend import ServedModel
from lmi_runtime.engine.engine import LLMEngine
from lmi_runtime.engine.kv_cache import KVCacheManager
from lmi_runtime.engine.request import FinishReason, Sequence
from lmi_runtime.engine.sampler import Pick


class TokenStep(NamedTuple):
    seq: Sequence
    token: int | None  # None: no new token, only `done`
    logprob: float
    done: bool  # the backend ended the sequence (end token, its own limit)


class TokenBackend(KVCacheManager):
    """A backend that samples by itself. Its library schedules its own KV cache, so the backend
    is its own `KVCacheManager` (`reserve`/`free` by its rule); `start` begins the newly
    admitted sequences, `poll` returns the tokens produced since the last call."""

    info: ServedModel
    tokenizer: object
    device = torch.device("cpu")  # the engine's sampling generators are never used

    @property
    def kv_manager(self) -> KVCacheManager:
        return self

    @abstractmethod
    def start(self, seqs: list[Sequence]) -> None: ...

    @abstractmethod
    def poll(self, running: list[Sequence]) -> list[TokenStep]: ...


class TokenEngine(LLMEngine):
    def _prompt_budget(self) -> None:
        return None  # the library bounds its own prompt work (see the module's docstring)

    def step(self) -> None:
        self._drop_aborted()
        admitted = self.scheduler.admit()
        if admitted:
            self.metrics.prompt.inc(sum(len(s.prompt_ids) for s in admitted))
            self._isolated(admitted, self._start)
        running = list(self.scheduler.running)
        if not running:
            return
        self.metrics.batch.observe(len(running))
        for step in self.backend.poll(running):
            if step.seq.seq_id in self._active and step.token is not None:
                self._append(step.seq, Pick(step.token, step.logprob, None))
            if step.done and step.seq.seq_id in self._active:
                state = self._active[step.seq.seq_id]
                released, _ = state.stopper.feed(state.detok.flush())
                state.text.append(released + state.stopper.flush())
                self._finish(step.seq, FinishReason.EOS)

    def _start(self, seqs: list[Sequence]) -> list[Sequence]:
        self.backend.start(seqs)
        return seqs
