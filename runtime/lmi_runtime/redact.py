"""Secrets never reach a message: every error, hint and log line goes through `redact`.

Three shapes are hidden: the userinfo of a URL (`http://user:pass@host` → `http://***@host`,
as in a pasted AWS_ENDPOINT_URL), the value after a key that ends in a secret word (`HF_TOKEN=…`,
`AWS_SECRET_ACCESS_KEY: …`, `"password": "…"`; not `max_new_tokens: 16` or `bos_token_id: 1`), and strings shaped like well-known credentials
(`hf_…`, `AKIA…`/`ASIA…`, `ghp_…`, `sk-…`) wherever they appear, e.g. a token pasted under
the wrong serving.properties key and echoed back by a validation error.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_KEY = re.compile(
    r"(?P<key>\b[\w.-]*(?:token|secret|password|passwd|credentials?|api[_-]?key|access[_-]?key|auth)['\"]?)"
    r"(?P<sep>\s*[=:]\s*)(?P<quote>['\"]?)(?P<value>[^\s'\",;)]+)",
    re.IGNORECASE,
)
_TOKEN_SHAPES = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{16,}|(?:AKIA|ASIA)[A-Z0-9]{16}|gh[pousr]_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,}"
    r"|xox[abpr]-[A-Za-z0-9-]{10,})"
)


def redact(text: str) -> str:
    """`text` with URL userinfo, values of secret-looking keys and token-shaped strings masked."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _SECRET_KEY.sub(_mask_value, text)
    return _TOKEN_SHAPES.sub(MASK, text)


def _mask_value(match: re.Match) -> str:
    value = match["value"]
    if value.strip("*") == "" or value.lower() in ("none", "null"):
        return match[0]  # already masked, or nothing secret
    return f"{match['key']}{match['sep']}{match['quote']}{MASK}"


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (and drops the raw args)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install_log_redaction() -> None:
    """Redact every record that reaches the root logger's handlers."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
