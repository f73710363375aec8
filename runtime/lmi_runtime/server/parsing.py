"""Request bodies → validated models, with the unknown-field policy of each API family.

LMI and TGI routes are strict: an unknown key (a typo such as `max_new_token`) is a 422 that
names it. OpenAI routes follow what OpenAI clients expect of a compatible server: fields we do
not model but that cannot change the answer (`store`, `metadata`, `user`,
`stream_options.continuous_usage_stats`, …) are accepted, logged and listed in the
`X-LMI-Ignored-Params` response header; fields whose meaning we cannot honour and that would
change the answer (`tools`, `response_format` other than text, `suffix`, …) are a 400 naming the
field; `--strict-params` makes every unknown field a 400.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lmi_runtime.server.errors import HTTPError

log = logging.getLogger("lmi_runtime.server")
M = TypeVar("M", bound=BaseModel)
IGNORED_HEADER = "X-LMI-Ignored-Params"


def load_json(raw: bytes) -> Any:
    """Standard JSON only: Python's parser also takes `Infinity` and `NaN`, which are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a JSON value")

    try:
        return json.loads(raw, parse_constant=refuse)
    except ValueError as err:
        raise HTTPError(400, f"the request body is not valid JSON: {err}", hint="send a JSON object") from err


def parse_strict(raw: bytes, model: type[M]) -> M:
    """LMI/TGI: every unknown key is a 422 naming it."""
    _object(raw)
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        raise HTTPError(422, "invalid request: " + "; ".join(_describe(e) for e in err.errors()),
                        param=_where(err.errors()[0])) from err


def parse_openai(raw: bytes, model: type[M], strict: bool) -> tuple[M, list[str]]:
    """OpenAI routes: the model and the unknown fields that were ignored (see the module doc)."""
    data = _object(raw)
    for name, why in _refused(data):
        raise HTTPError(400, f"'{name}' is not supported by this server: {why}", param=name,
                        code="unsupported_parameter", hint=f"remove '{name}' from the request")
    try:
        body = model.model_validate_json(raw)
    except ValidationError as err:
        raise HTTPError(400, "invalid request: " + "; ".join(_describe(e) for e in err.errors()),
                        param=_where(err.errors()[0])) from err
    ignored = unknown_fields(body)
    if ignored and strict:
        raise HTTPError(400, f"unknown parameter '{ignored[0]}' (the server runs with --strict-params)",
                        param=ignored[0], code="unknown_parameter", hint="remove it, or serve without --strict-params")
    if ignored:
        log.info("ignored request fields: %s", ", ".join(ignored))
    return body, ignored


def unknown_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of every field a lenient model accepted without modelling it."""
    names = [prefix + key for key in (model.model_extra or {})]
    for key in type(model).model_fields:
        value = getattr(model, key)
        children = value if isinstance(value, list) else [value]
        for index, child in enumerate(children):
            if isinstance(child, BaseModel):
                where = f"{prefix}{key}" + (f".{index}" if isinstance(value, list) else "")
                names += unknown_fields(child, where + ".")
    return names


def _object(raw: bytes) -> dict:
    data = load_json(raw)
    if not isinstance(data, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    return data


def _refused(data: dict) -> list[tuple[str, str]]:
    """Fields that would change the answer in a way this server cannot honour."""
    out = []
    if data.get("tools") or data.get("functions"):
        out.append(("tools" if data.get("tools") else "functions", "no tool or function calling"))
    if data.get("tool_choice") not in (None, "none") or data.get("function_call") not in (None, "none"):
        out.append(("tool_choice" if "tool_choice" in data else "function_call", "no tool or function calling"))
    fmt = data.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        out.append(("response_format", "only {\"type\": \"text\"}; no JSON mode or schema-constrained decoding"))
    if data.get("suffix"):
        out.append(("suffix", "no fill-in-the-middle"))
    if data.get("modalities") not in (None, ["text"]) or data.get("audio"):
        out.append(("modalities", "text only"))
    if data.get("prediction"):
        out.append(("prediction", "no predicted outputs"))
    return out


def _where(error: dict) -> str:
    return ".".join(str(p) for p in error["loc"]) or "body"


def _describe(error: dict) -> str:
    where = _where(error)
    if error["type"] == "extra_forbidden":
        return f"unknown parameter '{where}'"
    if error["type"] == "missing":
        return f"'{where}' is required"
    return f"'{where}': {error['msg']} (got {json.dumps(error.get('input'), default=str)[:80]})"
