"""The engine's settings for `lmi-serve`: CLI options over the shared LMI configuration.

Precedence, highest first: a CLI option; the environment (MAX_BATCH_SIZE, MAX_CONCURRENT_REQUESTS,
OPTION_*, HF_MODEL_TRUST_REMOTE_CODE, …); the serving.properties packaged with the model (the
artifact ships one written by lmi-compile); defaults. Everything below the CLI comes from
`load_serving_config`, so lmi-serve and lmi-compile read the LMI names the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmi_runtime.config import ServingConfig, load_serving_config
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.errors import ConfigError

# Engine settings with no first-class LMI name: read from option.<name> (OPTION_<NAME>).
OPTION_FIELDS: dict[str, type] = {
    "max_model_len": int,
    "max_new_tokens": int,
    "device": str,
    "backend": str,
    "kv_cache_gib": float,
    "served_model_name": str,
}


def engine_config(cli: Mapping[str, Any], env: Mapping[str, str] | None = None,
                  model_dir: Path | None = None) -> EngineConfig:
    properties = model_dir / "serving.properties" if model_dir is not None else None
    config = load_serving_config(env, properties if properties is not None and properties.is_file() else None)
    values = _from_serving_config(config)
    values.update({name: value for name, value in cli.items() if value is not None})
    return EngineConfig(**values)


def tgi_compat(env: Mapping[str, str] | None = None, model_dir: Path | None = None) -> bool:
    """option.tgi_compat (OPTION_TGI_COMPAT), with the precedence above: /invocations answers in TGI's shapes."""
    properties = model_dir / "serving.properties" if model_dir is not None else None
    config = load_serving_config(env, properties if properties is not None and properties.is_file() else None)
    return config.options.get("tgi_compat", "false").strip().lower() == "true"


def _from_serving_config(config: ServingConfig) -> dict[str, Any]:
    values: dict[str, Any] = {
        "max_batch_size": config.max_rolling_batch_size,
        "max_queue": config.job_queue_size,
        "dtype": config.dtype,
        "trust_remote_code": config.trust_remote_code,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enforce_eager": config.enforce_eager,
    }
    if config.n_positions is not None:
        values["max_model_len"] = config.n_positions
    for name, kind in OPTION_FIELDS.items():
        raw = config.options.get(name)
        if raw is None:
            continue
        try:
            values[name] = kind(raw)
        except ValueError as err:
            raise ConfigError(f"option.{name}={raw!r} is not a valid {kind.__name__}",
                              hint=f"set OPTION_{name.upper()} to a {kind.__name__}") from err
    return values
