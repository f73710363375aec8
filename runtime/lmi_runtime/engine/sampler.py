"""Token selection for a batch of sequences with per-request parameters.

Greedy rows share one argmax; sampled rows are processed one by one (their settings differ)
with each request's own `torch.Generator`, so a seeded request draws the same tokens whatever
else is in the batch. Reported log-probs (the chosen token's and the top-N) are the model's:
log-softmax of the raw logits, before any penalty or temperature, as OpenAI and vLLM report them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch

from lmi_runtime.engine.request import SEED_SPACE, SamplingParams, Sequence, TopLogprobs


@dataclass
class Pick:
    token: int
    log_prob: float
    top: TopLogprobs | None


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed if params.seed is not None else random.randrange(SEED_SPACE))
    return gen


def apply_repetition_penalty(row: torch.Tensor, token_ids: list[int], penalty: float) -> None:
    """HF semantics: divide positive logits of seen tokens by the penalty, multiply negative ones."""
    idx = torch.tensor(sorted(set(token_ids)), device=row.device, dtype=torch.long)
    seen = row[idx]
    row[idx] = torch.where(seen > 0, seen / penalty, seen * penalty)


def apply_frequency_presence(row: torch.Tensor, output_ids: list[int], frequency: float, presence: float) -> None:
    """OpenAI semantics, over generated tokens only: minus frequency × count, minus presence once."""
    counts = Counter(output_ids)
    if not counts:
        return
    idx = torch.tensor(list(counts), device=row.device, dtype=torch.long)
    n = torch.tensor(list(counts.values()), device=row.device, dtype=row.dtype)
    row[idx] -= frequency * n + presence


def filter_top_k_top_p(row: torch.Tensor, top_k: int, top_p: float, min_p: float = 0.0) -> torch.Tensor:
    if 0 < top_k < row.numel():
        kth = torch.topk(row, top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(row, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        row = row.scatter(0, order, sorted_logits.masked_fill(remove, float("-inf")))
    if min_p > 0.0:
        probs = row.softmax(-1)
        row = row.masked_fill(probs < min_p * probs.max(), float("-inf"))
    return row


def processed_logits(row: torch.Tensor, seq: Sequence) -> torch.Tensor:
    """The logits the choice is made on: bias, then penalties (a copy; `row` is left as is)."""
    params = seq.params
    if not params.logit_bias and not params.penalized:
        return row
    row = row.clone()
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), device=row.device, dtype=torch.long)
        row[ids] += torch.tensor(list(params.logit_bias.values()), device=row.device, dtype=row.dtype)
    if params.repetition_penalty != 1.0:
        apply_repetition_penalty(row, seq.token_ids, params.repetition_penalty)
    if params.frequency_penalty or params.presence_penalty:
        apply_frequency_presence(row, seq.output_ids, params.frequency_penalty, params.presence_penalty)
    return row


def top_logprobs(logprobs: torch.Tensor, n: int) -> list[TopLogprobs]:
    """The `n` most likely tokens of each row of `logprobs`, most likely first."""
    return _listed(torch.topk(logprobs, n, dim=-1))


def _listed(top: tuple[torch.Tensor, torch.Tensor]) -> list[TopLogprobs]:
    values, ids = top
    return [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]


class Sampled:
    """One batch's picks, still on the device. Reading them (`picks`) is the step's one host
    sync, so the engine can queue the next forward before it waits for this one.

    Their copy to the host is queued here, at once, and `picks` waits on an event recorded
    after it: a copy made when `picks` is called would queue behind the forward launched
    meanwhile, so the host would wait for that step too and the GPU would idle while the host
    turned tokens into text and prepared the step after."""

    def __init__(self, seqs: list[Sequence], chosen: torch.Tensor,
                 top: tuple[torch.Tensor, torch.Tensor] | None):
        self.seqs = seqs
        self.chosen = chosen  # [2, n] float64: token ids, their log-probs (the next step's inputs on the device)
        # for the host, into pinned memory when from CUDA (non_blocking), so the copy is queued now
        self._chosen = chosen.to("cpu", non_blocking=True)
        self._top = None if top is None else (top[0].to("cpu", non_blocking=True), top[1].to("cpu", non_blocking=True))
        self._copied = torch.cuda.Event() if chosen.is_cuda else None
        if self._copied is not None:
            self._copied.record()
        self._picks: list[Pick] | None = None

    def picks(self) -> list[Pick]:
        if self._picks is None:
            if self._copied is not None:
                self._copied.synchronize()
            ids, lps = self._chosen.tolist()
            tops = _listed(self._top) if self._top is not None else [[] for _ in self.seqs]
            self._picks = [
                Pick(int(token), lp, None if seq.params.logprobs is None else top[: seq.params.logprobs])
                for token, lp, top, seq in zip(ids, lps, tops, self.seqs)
            ]
        return self._picks


Ahead = dict[int, tuple[Sampled, int]]
"""Per sequence id, its next input token: sampled on the device (row of a `Sampled`), not read
yet. A backend that `decodes_ahead` feeds it to the next step without a host round trip."""


def sample(
    logits: torch.Tensor, seqs: list[Sequence], generators: dict[int, torch.Generator | None]
) -> Sampled:
    """Pick one token per row of `logits` ([len(seqs), vocab]). The choices stay on the device
    until `Sampled.picks` brings ids and log-probs back together (one host sync per step;
    sampled rows check their probabilities on the host first)."""
    logits = logits.float()
    logprobs = torch.log_softmax(logits, dim=-1)
    work = logits
    processed = [i for i, seq in enumerate(seqs) if seq.params.logit_bias or seq.params.penalized]
    if processed:
        work = logits.clone()
        for i in processed:
            work[i] = processed_logits(logits[i], seqs[i])
    chosen = work.argmax(dim=-1)
    for i, seq in enumerate(seqs):
        params = seq.params
        if params.greedy:
            continue
        row = filter_top_k_top_p(work[i] / params.temperature, params.top_k, params.top_p, params.min_p)
        probs = torch.softmax(row, dim=-1)
        if not torch.isfinite(probs).all():
            raise ValueError("the sampling parameters turned the model's logits into non-finite values")
        chosen[i] = torch.multinomial(probs, 1, generator=generators[seq.seq_id])[0]
    picked = logprobs.gather(1, chosen.unsqueeze(1)).squeeze(1)
    want = max((s.params.logprobs or 0) for s in seqs)
    top = torch.topk(logprobs, want, dim=-1) if want else None
    return Sampled(seqs, torch.stack((chosen.double(), picked.double())), top)
