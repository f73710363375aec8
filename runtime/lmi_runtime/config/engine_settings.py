"""The engine's settings for `lmi-serve`: CLI options over the shared LMI configuration.

Precedence, highest first: a CLI option; the environment (MAX_BATCH_SIZE, MAX_CONCURRENT_REQUESTS,
OPTION_*, HF_MODEL_TRUST_REMOTE_CODE, …); for an artifact, the limits record of the profile
served (its serving.properties is generated from the same record), else the serving.properties
in the model folder; defaults. CLI options become settings keyed like
serving.properties and go through `load_serving_config` with the rest, so a flag, a variable
and a file line are validated by one code path and refused with the same message
(`--max-batch-size 64 --max-concurrent-requests 8` as MAX_BATCH_SIZE=64 MAX_CONCURRENT_REQUESTS=8).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lmi_runtime.artifact.limits import profile_settings
from lmi_runtime.artifact.manifest import Profile
from lmi_runtime.config import ServingConfig, Setting, load_serving_config
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
    "quantized_kernels": str,
    "kernel_cache": str,
    "recompile": bool,
}


# EngineConfig field → the serving.properties key a CLI option sets (the rest: option.<field>).
CLI_KEYS = {"max_batch_size": "option.max_rolling_batch_size", "max_queue": "job_queue_size",
            "max_prefill_tokens": "option.max_rolling_batch_prefill_tokens", "quantize": "option.quantize"}
CLI_FLAGS = {"max_queue": "--max-concurrent-requests"}  # EngineConfig field → its lmi-serve flag
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def engine_config(cli: Mapping[str, Any], env: Mapping[str, str] | None = None,
                  model_dir: Path | None = None, profile: Profile | None = None) -> EngineConfig:
    properties = model_dir / "serving.properties" if model_dir is not None and profile is None else None
    config = load_serving_config(env, properties if properties is not None and properties.is_file() else None,
                                 overrides=cli_settings(cli),
                                 packaged=profile_settings(profile) if profile is not None else None)
    values = _from_serving_config(config)
    if model_dir is not None and values.get("max_model_len"):
        _check_model_len(values["max_model_len"], model_dir)
    return EngineConfig(**values)


def tgi_compat(env: Mapping[str, str] | None = None, model_dir: Path | None = None) -> bool:
    """option.tgi_compat (OPTION_TGI_COMPAT), with the precedence above: /invocations answers in TGI's shapes."""
    properties = model_dir / "serving.properties" if model_dir is not None else None
    config = load_serving_config(env, properties if properties is not None and properties.is_file() else None)
    return config.options.get("tgi_compat", "false").strip().lower() == "true"


def _check_model_len(wanted: int, model_dir: Path) -> None:
    """max_model_len (flag, OPTION_MAX_MODEL_LEN or option.n_positions) within what the model was trained for."""
    from lmi_runtime.modelfolder import read_config_file

    config_file = model_dir / "config.json"
    limit = read_config_file(config_file, str(model_dir)).get("max_position_embeddings") if config_file.is_file() else None
    if isinstance(limit, int) and wanted > limit:
        raise ConfigError(f"max_model_len {wanted} (--max-model-len, OPTION_MAX_MODEL_LEN or option.n_positions) exceeds "
                          f"the model's max_position_embeddings {limit}",
                          hint=f"set it to at most {limit}, or leave it unset")


def cli_settings(cli: Mapping[str, Any]) -> dict[str, Setting]:
    """Command-line options as settings, so they pass the same validation as the environment."""
    settings = {}
    for name, value in cli.items():
        if value is None:
            continue
        key = CLI_KEYS.get(name, f"option.{name}")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        settings[key] = Setting(key, text, "command-line option", CLI_FLAGS.get(name, f"--{name.replace('_', '-')}"))
    return settings


def _from_serving_config(config: ServingConfig) -> dict[str, Any]:
    values: dict[str, Any] = {
        "max_batch_size": config.max_rolling_batch_size,
        "max_queue": config.job_queue_size,
        "dtype": config.dtype,
        "trust_remote_code": config.trust_remote_code,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "enforce_eager": config.enforce_eager,
        "quantize": config.quantize,
        "max_prefill_tokens": config.max_rolling_batch_prefill_tokens,
    }
    if config.n_positions is not None:
        values["max_model_len"] = config.n_positions
    for name, kind in OPTION_FIELDS.items():
        raw = config.options.get(name)
        if raw is None:
            continue
        try:
            values[name] = _parse(kind, raw)
        except ValueError as err:
            raise ConfigError(f"option.{name}={raw!r} is not a valid {kind.__name__}",
                              hint=f"set OPTION_{name.upper()} to a {kind.__name__}") from err
        if kind is float and not (math.isfinite(values[name]) and values[name] > 0):
            raise ConfigError(f"option.{name}={raw!r} must be a finite number above 0",
                              hint=f"set --{name.replace('_', '-')} / OPTION_{name.upper()} to e.g. 2")
    _check_device(values.get("device", "auto"))
    return values


def _parse(kind: type, raw: str) -> Any:
    if kind is bool:  # bool("false") is True
        if str(raw).lower() not in ("true", "false"):
            raise ValueError(raw)
        return str(raw).lower() == "true"
    return kind(raw)


def _check_device(device: str) -> None:
    """`cpu`, `cuda`, `cuda:N` (that exists here) or `auto`, refused before the server listens."""
    if not _DEVICE.match(device):
        raise ConfigError(f"--device / OPTION_DEVICE = {device!r} is not a device", hint="use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s) (cuda:0..cuda:{count - 1})" if count else "no CUDA device"
            raise ConfigError(f"--device {device} was asked for, but this machine has {have}",
                              hint="use --device auto (or cpu), or a cuda index that exists")
