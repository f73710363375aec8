"""Perplexity on held-out text: the number the quality gate compares."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lmi_runtime.errors import ConfigError


def eval_windows(ids: list[int], seq_len: int, max_tokens: int) -> list[list[int]]:
    """Non-overlapping windows of `seq_len` tokens covering at most `max_tokens` tokens."""
    count = min(len(ids), max_tokens) // seq_len
    if count == 0:
        raise ConfigError(
            f"the evaluation text gives {len(ids)} tokens, less than one window of {seq_len}",
            hint="lower quality.seq_len or give a larger evaluation corpus",
        )
    return [ids[i * seq_len : (i + 1) * seq_len] for i in range(count)]


@torch.inference_mode()
def perplexity(
    model: torch.nn.Module,
    windows: list[list[int]],
    device: str = "cpu",
    batch_size: int = 1,
    on_windows: Callable[[int], None] | None = None,
) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of `windows`
    (all of one length), `batch_size` windows per forward pass; `on_windows(n)` after each."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(windows), batch_size):
        ids = torch.tensor(windows[start : start + batch_size], device=device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
        total_nll += nll.item()
        total_tokens += ids[:, 1:].numel()
        if on_windows:
            on_windows(ids.shape[0])
    return math.exp(total_nll / total_tokens)
