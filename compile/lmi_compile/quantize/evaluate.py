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
    on_window: Callable[[], None] | None = None,
) -> float:
    """exp(mean next-token negative log-likelihood) over every predicted token of `windows`."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for window in windows:
        ids = torch.tensor([window], device=device)
        logits = model(input_ids=ids).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
        total_nll += nll.item()
        total_tokens += ids.shape[1] - 1
        if on_window:
            on_window()
    return math.exp(total_nll / total_tokens)
