"""Input limits enforced before any handler parses a request.

- Request headers must arrive within a deadline (`--header-timeout`): uvicorn has no such
  timeout, so a client that dribbles its headers one byte at a time (slowloris) would hold a
  connection forever. `uvicorn_limits` swaps in an h11 protocol that closes it.
- The body is capped at `SAGEMAKER_MAX_PAYLOAD_IN_MB` (default 6, as SageMaker), checked on
  Content-Length and again while reading: 413 without buffering more than the cap.
- A JSON body nested deeper than `MAX_JSON_DEPTH` is refused with 400 before `json.loads`
  (a 50,000-deep array would otherwise end in a RecursionError and a 500).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from lmi_runtime.errors import ConfigError

PAYLOAD_VARIABLE = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
DEFAULT_PAYLOAD_MB = 6.0
MAX_JSON_DEPTH = 64
DISCARD_FACTOR = 4  # a body beyond 4 × the cap is cut off without its 413 being readable
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def max_payload_bytes(env: Mapping[str, str] | None = None) -> int:
    """The body cap from SAGEMAKER_MAX_PAYLOAD_IN_MB (MB = 2**20 bytes), validated."""
    raw = (os.environ if env is None else env).get(PAYLOAD_VARIABLE, "").strip()
    if not raw:
        return int(DEFAULT_PAYLOAD_MB * 2**20)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{PAYLOAD_VARIABLE}={raw!r} (environment variable) is not valid: expected a number of MB above 0",
                          hint=f"set {PAYLOAD_VARIABLE}=6 (SageMaker's default) or unset it")
    return int(value * 2**20)


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays/objects of `body` nest deeper than `limit` (strings skipped)."""
    if b"[" not in body and b"{" not in body:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    depth = 0
    for char in brackets:
        depth += 1 if char in b"[{" else -1
        if depth > limit:
            return True
    return False


class BodyLimits:
    """Pure ASGI middleware: read the body under the cap, check its nesting, then hand the
    same bytes to the app (and later receive() calls through, so disconnects still show)."""

    def __init__(self, app, max_bytes: int, max_depth: int = MAX_JSON_DEPTH):
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(receive, send, more=message.get("more_body", False))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth_exceeds(body, self.max_depth):
            return await _reply(send, 400, f"the JSON body nests deeper than {self.max_depth} levels",
                                "flatten the request; no API here needs deep nesting")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, receive, send, more: bool = True):
        """413, after reading (and dropping) the rest of a body up to DISCARD_FACTOR × the cap:
        a client still uploading when the connection closes sees a reset, not the answer."""
        discarded = 0
        while more and discarded <= DISCARD_FACTOR * self.max_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            discarded += len(message.get("body", b""))
            more = message.get("more_body", False)
        limit_mb = self.max_bytes / 2**20
        return await _reply(send, 413, f"the request body is larger than {limit_mb:g} MB",
                            f"send a smaller request, or raise {PAYLOAD_VARIABLE} on the endpoint")


async def _reply(send, status: int, message: str, hint: str) -> None:
    body = json.dumps({"error": message, "hint": hint}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for receiving a request's headers."""

    header_timeout = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = None
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # headers not complete in time: drop the connection

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()  # the request line and headers are in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def uvicorn_limits(header_timeout: float) -> dict:
    """uvicorn.Config arguments for the header deadline (h11 with a timer)."""
    protocol = type("H11WithHeaderTimeout", (_HeaderTimeoutH11,), {"header_timeout": header_timeout})
    return {"http": protocol}
