"""Unknown keys are warned about, never silently dropped: the warning names the nearest known
key, because a typo (`option.max_rolling_batch_sise`) is the usual cause."""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable


class ConfigWarning(UserWarning):
    """A setting that was ignored or overridden; the message says which and why."""


def nearest(name: str, known: Iterable[str]) -> str | None:
    """The known key most similar to `name` (case-insensitive), or None when `known` is empty."""
    candidates = list(known)
    if not candidates:
        return None
    lowered = {c.lower(): c for c in candidates}
    scored = ((difflib.SequenceMatcher(None, name.lower(), low).ratio(), low) for low in lowered)
    return lowered[max(scored)[1]]


def warn_unknown(name: str, known: Iterable[str], where: str, consequence: str = "ignored") -> None:
    """Warn that `name` is not a known key of `where`, naming the nearest known key."""
    guess = nearest(name, known)
    hint = f"; nearest known key: '{guess}'" if guess else ""
    warnings.warn(f"unknown key '{name}' in {where} ({consequence}){hint}", ConfigWarning, stacklevel=3)


def warn(message: str) -> None:
    warnings.warn(message, ConfigWarning, stacklevel=3)
