"""A raw setting as the user wrote it, with where it came from, so that an error can say
`MAX_BATCH_SIZE='abc' (environment)` instead of naming an internal field."""

from __future__ import annotations

from dataclasses import dataclass

SHOWN_CHARS = 40


@dataclass(frozen=True)
class Setting:
    key: str  # serving.properties key: option.<name>, engine, job_queue_size, or HF_TOKEN
    value: str
    origin: str  # e.g. "environment variable MAX_BATCH_SIZE", "serving.properties line 3"
    name: str  # the name the user typed: MAX_BATCH_SIZE, option.max_rolling_batch_size
    secret: bool = False

    def describe(self) -> str:
        shown = "****" if self.secret else repr(self.value)
        if len(shown) > SHOWN_CHARS:  # a long value is not echoed in full (it may be a pasted secret)
            shown = f"{shown[:SHOWN_CHARS]}… ({len(self.value)} characters)"
        return f"{self.name}={shown} ({self.origin})"
