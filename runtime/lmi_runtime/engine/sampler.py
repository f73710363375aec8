"""Token selection for a batch of sequences with per-request parameters.

Greedy rows share one argmax; sampled rows are processed one by one (their settings differ)
with each request's own `torch.Generator`, so a seeded request draws the same tokens whatever
else is in the batch. Reported log-probs are the model's (raw logits, before processing).
"""

from __future__ import annotations

import random

import torch

from lmi_runtime.engine.request import SamplingParams, Sequence


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
    return gen


def apply_repetition_penalty(row: torch.Tensor, token_ids: list[int], penalty: float) -> None:
    """HF semantics: divide positive logits of seen tokens by the penalty, multiply negative ones."""
    idx = torch.tensor(sorted(set(token_ids)), device=row.device, dtype=torch.long)
    seen = row[idx]
    row[idx] = torch.where(seen > 0, seen / penalty, seen * penalty)


def filter_top_k_top_p(row: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if 0 < top_k < row.numel():
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        row = row.scatter(0, order, sorted_logits.masked_fill(remove, float("-inf")))
    return row


def sample(
    logits: torch.Tensor, seqs: list[Sequence], generators: dict[int, torch.Generator | None]
) -> tuple[list[int], list[float]]:
    """Pick one token per row of `logits` ([len(seqs), vocab]); return ids and log-probs."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    work = logits.clone()
    for i, seq in enumerate(seqs):
        if seq.params.repetition_penalty != 1.0:
            apply_repetition_penalty(work[i], seq.token_ids, seq.params.repetition_penalty)
    chosen = work.argmax(dim=-1).tolist()
    for i, seq in enumerate(seqs):
        params = seq.params
        if params.greedy:
            continue
        row = filter_top_k_top_p(work[i] / params.temperature, params.top_k, params.top_p)
        probs = torch.softmax(row, dim=-1)
        chosen[i] = int(torch.multinomial(probs, 1, generator=generators[seq.seq_id]).item())
    picked = logprobs[torch.arange(len(seqs)), torch.tensor(chosen)].tolist()
    return chosen, picked
