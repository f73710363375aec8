"""Build the EngineConfig from CLI options, with LMI environment names as fallbacks.

Precedence: a CLI option, then the first environment variable set among its LMI names, then
the default. (One function on purpose: the shared ServingConfig loader replaces it.)
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.errors import ConfigError

ENV_NAMES: dict[str, tuple[str, ...]] = {
    "max_batch_size": ("MAX_BATCH_SIZE", "OPTION_MAX_ROLLING_BATCH_SIZE"),
    "max_queue": ("MAX_CONCURRENT_REQUESTS", "SERVING_JOB_QUEUE_SIZE"),
    "max_model_len": ("OPTION_MAX_MODEL_LEN",),
    "max_new_tokens": ("OPTION_MAX_NEW_TOKENS",),
    "dtype": ("OPTION_DTYPE",),
    "device": ("OPTION_DEVICE",),
    "backend": ("OPTION_BACKEND",),
    "kv_cache_gib": ("OPTION_KV_CACHE_GIB",),
    "trust_remote_code": ("HF_MODEL_TRUST_REMOTE_CODE", "OPTION_TRUST_REMOTE_CODE"),
    "served_model_name": ("SERVED_MODEL_NAME", "OPTION_SERVED_MODEL_NAME"),
}


def _convert(name: str, source: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.strip().lower() not in ("true", "false", "1", "0"):
            raise ConfigError(f"{source}={raw!r} is not a boolean", hint="use true or false")
        return raw.strip().lower() in ("true", "1")
    try:
        return kind(raw)
    except ValueError as err:
        raise ConfigError(f"{source}={raw!r} is not a valid {kind.__name__} for {name}") from err


def engine_config(cli: dict[str, Any], env: dict[str, str] | None = None) -> EngineConfig:
    env = dict(os.environ) if env is None else env
    defaults = EngineConfig()
    values: dict[str, Any] = {}
    for field in fields(EngineConfig):
        if cli.get(field.name) is not None:
            values[field.name] = cli[field.name]
            continue
        kind = type(getattr(defaults, field.name)) if getattr(defaults, field.name) is not None else int
        if field.name == "served_model_name":
            kind = str
        for var in ENV_NAMES.get(field.name, ()):
            if env.get(var):
                values[field.name] = _convert(field.name, var, env[var], kind)
                break
    return EngineConfig(**values)
