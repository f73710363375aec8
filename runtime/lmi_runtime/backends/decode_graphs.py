"""CUDA graphs of the decode step, one per batch-size bucket, captured at start.

Why: an eager decode step of a 7B model launches ~1,600 kernels and the GPU sat idle 76% of
the step (GPU-NOTES.md). A graph replays them all in one launch. A graph fixes its tensors'
addresses and shapes, so every input lives in a static buffer sized for the largest bucket;
a step of `n` sequences copies its inputs into the first `n` rows and replays the graph of the
smallest bucket >= n. Rows past `n` are padding: they write their key/value to the scratch
block 0 and read one position of it, so they can never touch a live sequence's cache.
Block tables are as wide as `max_model_len` needs; the kernel reads only `ctx_len` positions,
so stale columns are harmless.

The host work between two replays is the GPU's idle time, so it is kept small: a sequence's
block table never changes while it runs (its blocks are all reserved at admission), so a row
of the static table is written only when another sequence takes it over, and the per-token
inputs (ids, positions, slots, context lengths, padding included) go over in one copy.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from lmi_runtime.backends.llama_model import StepInputs
from lmi_runtime.engine.request import Sequence
from lmi_runtime.engine.sampler import Ahead
from lmi_runtime.kernels.paged_attention import AttnBatch

if TYPE_CHECKING:
    from lmi_runtime.backends.torch_llama import TorchLlamaBackend
    from lmi_runtime.engine.kv_cache import BlockKVCacheManager

log = logging.getLogger("lmi_runtime.graphs")


def _pinned(rows: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """A host tensor in pinned memory: copied with non_blocking it is queued at once, where one
    from pageable memory may make the host wait for the step still running (CUDA stages it)."""
    return torch.tensor(rows, dtype=dtype, pin_memory=True)


def bucket_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every 8 up to 64, then every 32: few graphs, little padding."""
    sizes = [1, 2, 4] + list(range(8, 65, 8)) + list(range(96, max(max_batch, 1) + 32, 32))
    return sorted({min(s, max_batch) for s in sizes})


class DecodeGraphs:
    def __init__(self, backend: "TorchLlamaBackend", max_batch: int):
        dev = backend.device
        self.max_batch = max_batch
        # ids, positions, slots, context lengths: one host -> device copy per step
        self.tokens = torch.zeros((4, max_batch), dtype=torch.long, device=dev)
        self.tables = torch.zeros((max_batch, backend.max_blocks), dtype=torch.int32, device=dev)
        self.ctx_lens = torch.ones(max_batch, dtype=torch.int32, device=dev)
        self.row_owner: list[int | None] = [None] * max_batch  # the sequence whose table each row holds
        self.rows = torch.arange(max_batch, device=dev)
        self.rows32 = self.rows.int()
        self.ones = torch.ones(max_batch, dtype=torch.int32, device=dev)
        self.zeros = torch.zeros(max_batch, dtype=torch.int32, device=dev)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _inputs(self, n: int) -> StepInputs:
        rows32 = self.rows32[:n]
        attn = AttnBatch(self.tables[:n], self.ctx_lens[:n], rows32, self.ones[:n], rows32, self.zeros[:n],
                         block_q=1, max_q_len=1, max_ctx_len=self.tables.shape[1])
        return StepInputs(self.tokens[0, :n], self.tokens[1, :n], self.tokens[2, :n], attn, self.rows[:n])

    def capture(self, backend: "TorchLlamaBackend") -> None:
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        model, cache, block = backend.model, backend.kv.pool, backend.kv.block_size
        for n in reversed(bucket_sizes(self.max_batch)):  # largest first: later ones reuse its memory
            inputs = self._inputs(n)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: compiles and autotunes outside the capture
                for _ in range(2):
                    model(inputs, cache, block)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                out = model(inputs, cache, block)
            self.graphs[n] = (graph, out)
            log.debug("decode graph for batch %d captured at %.2f s", n, time.perf_counter() - started)
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - started  # compiling (or loading compiled code) included
        log.info("captured %d decode graphs (batch 1..%d) in %.1f s", len(self.graphs), self.max_batch,
                 self.capture_s)

    def run(self, backend: "TorchLlamaBackend", seqs: list[Sequence], ahead: Ahead) -> torch.Tensor:
        """Replay the graph for `seqs`; a sequence in `ahead` feeds the token sampled for it by
        the step before, copied on the device (its position is one past its token list)."""
        n = len(seqs)
        size = min(s for s in self.graphs if s >= n)
        blocks = backend.kv.blocks
        pad = size - n  # padding rows: token 0 at position 0 of the scratch block, context 1
        last = [len(s.prompt_ids) + len(s.output_ids) - (s.seq_id not in ahead) for s in seqs]
        ids = [0 if s.seq_id in ahead else (s.output_ids or s.prompt_ids)[-1] for s in seqs]
        host = _pinned([ids + [0] * pad, last + [0] * pad,
                        [blocks.slot(s.seq_id, p) for s, p in zip(seqs, last)] + [0] * pad,
                        [p + 1 for p in last] + [1] * pad])
        self.tokens[:, :size].copy_(host, non_blocking=True)
        self.ctx_lens[:size].copy_(self.tokens[3, :size])
        self._copy_ahead(seqs, ahead)
        self._place_tables(blocks, [s.seq_id for s in seqs] + [None] * pad)
        if backend.tp is not None:  # tensor parallel: the workers replay the same inputs
            backend.tp.replay(self, size)
        graph, out = self.graphs[size]
        graph.replay()
        return out[:n]

    def _copy_ahead(self, seqs: list[Sequence], ahead: Ahead) -> None:
        """The input ids sampled by the step before, from its (device) picks into the graph's."""
        sources: dict[int, tuple[torch.Tensor, list[int], list[int]]] = {}
        for row, seq in enumerate(seqs):
            if seq.seq_id in ahead:
                sampled, src = ahead[seq.seq_id]
                _, dst_rows, src_rows = sources.setdefault(id(sampled), (sampled.chosen, [], []))
                dst_rows.append(row)
                src_rows.append(src)
        for chosen, dst_rows, src_rows in sources.values():
            index = _pinned([dst_rows, src_rows]).to(self.tokens.device, non_blocking=True)
            self.tokens[0].index_copy_(0, index[0], chosen[0].index_select(0, index[1]).long())

    def _place_tables(self, blocks: "BlockKVCacheManager", owners: list[int | None]) -> None:
        """Write the block table of each row whose sequence changed (None: a padding row,
        whose first block is the scratch block)."""
        for row, seq_id in enumerate(owners):
            if self.row_owner[row] == seq_id:
                continue
            self.row_owner[row] = seq_id
            table = [0] if seq_id is None else blocks.table(seq_id)
            self.tables[row, : len(table)].copy_(_pinned(table, torch.int32), non_blocking=True)

    def forget_rows(self) -> None:
        """The static tables were written from outside (a benchmark): rewrite every row next time."""
        self.row_owner = [None] * self.max_batch
        self.tables.zero_()
