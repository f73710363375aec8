"""The torch backend: the compact Llama-family model (`llama_model.py`) over the paged KV cache
(`paged_cache.py`, its blocks claimed through the engine's block manager), the same code on
CPU and CUDA.

Prefill packs every admitted prompt into one token batch (no padding), in chunks of at most
`prefill_tokens` tokens so a burst of long prompts never needs more activation memory than
one chunk; a sequence longer than a chunk is prefilled over several chunks, each attending to
what the previous ones cached. The chunk is also the per-step prompt budget it asks of the
engine: about one chunk of prompts per step, a decode step between two.
Decode runs one step over every running sequence; on CUDA that step is replayed from a CUDA
graph captured at start for the next batch-size bucket (`decode_graphs.py`). Positions come
from each sequence's token list, so re-running a step rewrites the same cache slots
(idempotent, as the engine's failure isolation requires).
Decode takes the engine's `ahead` tokens (sampled by the step before, not read yet): a graph
step copies them on the device, so the host queues step N+1 before it waits for step N.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from lmi_runtime.backends.llama_model import LlamaForCausalLM, StepInputs
from lmi_runtime.backends.paged_cache import PagedKVCache
from lmi_runtime.engine.backend import Backend, ServedModel
from lmi_runtime.engine.request import Sequence
from lmi_runtime.engine.sampler import Ahead
from lmi_runtime.kernels.paged_attention import AttnBatch, plan_tiles, tokens_per_tile

log = logging.getLogger("lmi_runtime.torch_backend")

PREFILL_CHUNK = 8192
SCRATCH_SEQ = -1  # the sequence id of `_scratch_prefill` (scoring, the warm-up)


@dataclass
class Work:
    """One sequence's share of a forward: `q_len` new tokens ending at position `ctx_len`."""

    seq_id: int
    token_ids: list[int]  # the tokens of this forward
    ctx_len: int


class TorchLlamaBackend(Backend):
    decodes_ahead = True

    def __init__(self, model: LlamaForCausalLM, tokenizer, info: ServedModel, kv: PagedKVCache,
                 prefill_tokens: int = PREFILL_CHUNK):
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.kv = kv
        self.kv_manager = kv.blocks
        self.device = kv.pool.device
        self.prefill_tokens = prefill_tokens
        self.max_blocks = math.ceil(info.max_model_len / kv.block_size)
        self.graphs = None  # DecodeGraphs once captured (CUDA only)
        self.tp = None  # tensor_parallel.Leader on rank 0 of a TP group: sends each step to the workers

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        rows = self._prefill([(s.seq_id, s.token_ids) for s in seqs], all_logits=False)
        return torch.cat(rows)

    def decode(self, seqs: list[Sequence], ahead: Ahead | None = None) -> torch.Tensor:
        ahead = ahead or {}
        if self.graphs is not None and len(seqs) <= self.graphs.max_batch:
            return self.graphs.run(self, seqs, ahead)
        # eager: the tokens sampled ahead are read here (one host sync)
        work = [Work(s.seq_id, [ahead[s.seq_id][0].picks()[ahead[s.seq_id][1]].token], len(s.token_ids) + 1)
                if s.seq_id in ahead else Work(s.seq_id, s.token_ids[-1:], len(s.token_ids)) for s in seqs]
        return self.forward(work)

    def fork(self, parent: Sequence, child: Sequence) -> bool:
        """Copy the parent's prompt keys/values into the child's own blocks (one indexed copy
        over every layer): extra samples of one request share its prefill."""
        positions = range(len(parent.prompt_ids))
        src = torch.tensor([self.kv.blocks.slot(parent.seq_id, p) for p in positions], device=self.device)
        dst = torch.tensor([self.kv.blocks.slot(child.seq_id, p) for p in positions], device=self.device)
        if self.tp is not None:
            self.tp.fork(src, dst)
        self.kv.pool[:, :, dst] = self.kv.pool[:, :, src]
        return True

    def score(self, token_ids: list[int]) -> torch.Tensor:
        """Logits at every position of `token_ids` ([T, vocab], fp32), with no trace left in
        the cache: row i predicts token i + 1."""
        rows = self._scratch_prefill(token_ids, all_logits=True)
        if rows is None:
            raise RuntimeError("no KV-cache room to score this prompt now; retry later")
        return torch.cat(rows).float()

    def _scratch_prefill(self, token_ids: list[int], all_logits: bool) -> list[torch.Tensor] | None:
        """`_prefill` of one prompt in blocks held only for it (released after); None when the
        cache has no room for it now."""
        if not self.kv.blocks.allocate(SCRATCH_SEQ, len(token_ids)):
            return None
        try:
            return self._prefill([(SCRATCH_SEQ, token_ids)], all_logits)
        finally:
            self.kv.blocks.release(SCRATCH_SEQ)

    def warm_prefill(self, max_tokens: int) -> list[int]:
        """One throwaway prefill of each power-of-two size from 2 to `max_tokens` (capped by the
        chunk and the model length; the cache's blocks released after), so that what a prompt's
        first forward compiles or autotunes (the prefill attention kernel, the quantized
        matmul's tiles per token-count bucket, the dequantization before cuBLAS) is done at
        start, where the kernel cache saves it. Returns the sizes run."""
        started = time.perf_counter()
        ran = []
        size = 2
        while size <= min(max_tokens, self.prefill_tokens, self.info.max_model_len):
            if self._scratch_prefill([0] * size, all_logits=False) is None:
                break  # a cache this small serves short prompts only
            ran.append(size)
            size *= 2
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        log.info("prefill warmed at %s tokens in %.1f s", ", ".join(map(str, ran)) or "no sizes (no room)",
                 time.perf_counter() - started)
        return ran

    def _prefill(self, prompts: list[tuple[int, list[int]]], all_logits: bool) -> list[torch.Tensor]:
        """Pack prompts into forwards of at most `prefill_tokens` tokens, splitting a prompt
        across forwards where it does not fit (each chunk attends to the ones cached before
        it); per prompt, in order, the logits of its last token ([1, vocab]) or of all."""
        out: list[torch.Tensor] = []
        work: list[Work] = []
        wanted: list[bool] = []  # per Work: does its logits row go to `out`?
        room = self.prefill_tokens

        def flush() -> None:
            nonlocal work, wanted, room
            if work:
                logits = self.forward(work, all_logits)
                if all_logits:
                    out.append(logits)
                else:
                    out.extend(logits[i: i + 1] for i, keep in enumerate(wanted) if keep)
            work, wanted, room = [], [], self.prefill_tokens

        for seq_id, token_ids in prompts:
            done = 0
            while done < len(token_ids):
                take = min(room, len(token_ids) - done)
                work.append(Work(seq_id, token_ids[done: done + take], done + take))
                done += take
                wanted.append(done == len(token_ids))
                room -= take
                if room == 0:
                    flush()
        flush()
        return out

    def forward(self, work: list[Work], all_logits: bool = False) -> torch.Tensor:
        """One eager forward over packed tokens; logits of each Work's last token (or all)."""
        step = self.step_inputs(work, all_logits)
        if self.tp is not None:
            self.tp.forward(step)
        return self.model(step, self.kv.pool, self.kv.block_size)

    def step_inputs(self, work: list[Work], all_logits: bool = False) -> StepInputs:
        q_lens = [len(w.token_ids) for w in work]
        ctx_lens = [w.ctx_len for w in work]
        tables = self.block_tables([w.seq_id for w in work], max(ctx_lens))
        positions = torch.tensor([p for w, n in zip(work, q_lens) for p in range(w.ctx_len - n, w.ctx_len)])
        seq_of_token = torch.repeat_interleave(torch.arange(len(work)), torch.tensor(q_lens))
        bs = self.kv.block_size
        slots = tables[seq_of_token, positions // bs].long() * bs + positions % bs
        ends = torch.tensor(q_lens).cumsum(0)
        group = self.model.args.num_heads // self.model.args.num_kv_heads
        block_q = max(tokens_per_tile(n, group) for n in q_lens)
        tile_seq, tile_start = plan_tiles(q_lens, block_q)
        dev = self.device

        def i32(values) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.int32).to(dev, non_blocking=True)

        attn = AttnBatch(tables.to(dev, non_blocking=True), i32(ctx_lens), i32(ends - torch.tensor(q_lens)),
                         i32(q_lens), i32(tile_seq), i32(tile_start), block_q, max(q_lens), max(ctx_lens))
        rows = torch.arange(int(ends[-1])) if all_logits else ends - 1
        ids = torch.tensor([t for w in work for t in w.token_ids])
        return StepInputs(ids.to(dev), positions.to(dev), slots.to(dev), attn, rows.to(dev))

    def block_tables(self, seq_ids: list[int], max_ctx: int) -> torch.Tensor:
        """[B, W] int32 host tensor of the blocks covering the first `max_ctx` positions."""
        width = math.ceil(max_ctx / self.kv.block_size)
        tables = torch.zeros((len(seq_ids), width), dtype=torch.int32)
        for row, seq_id in enumerate(seq_ids):
            table = self.kv.blocks.table(seq_id)[:width]
            tables[row, : len(table)] = torch.tensor(table, dtype=torch.int32)
        return tables
