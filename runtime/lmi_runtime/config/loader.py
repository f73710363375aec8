"""Build a `ServingConfig` from the environment and serving.properties, with one precedence rule."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from lmi_runtime.config.env import read_environment
from lmi_runtime.config.properties import read_properties
from lmi_runtime.config.schema import ALLOWED, FIELD_KEYS, KEY_FIELDS, ServingConfig
from lmi_runtime.config.settings import Setting
from lmi_runtime.config.suggest import warn
from lmi_runtime.errors import ConfigError

PRECEDENCE_DOC = (
    "Precedence, highest first: environment variables, then serving.properties, then defaults. "
    "The environment is what you set when you deploy and the file is what was packaged with the "
    "model, so a deploy-time setting changes behaviour without repackaging. Within the environment "
    "the most specific name wins: OPTION_<NAME> over the simplified LMI variable (HF_MODEL_ID, "
    "TENSOR_PARALLEL_DEGREE, MAX_BATCH_SIZE, ...) over a TGI/SageMaker alias (SM_NUM_GPUS, "
    "HF_MODEL_QUANTIZE, ...). Note: LMI does the opposite (its file wins over OPTION_* variables); "
    "whenever the environment overrides a different value from the file, a warning names both."
)


def load_serving_config(
    env: Mapping[str, str] | None = None, properties: Path | str | None = None,
    overrides: Mapping[str, Setting] | None = None, packaged: Mapping[str, Setting] | None = None,
) -> ServingConfig:
    """The deployment's configuration.

    Precedence, highest first: environment variables, then serving.properties, then defaults
    (see `PRECEDENCE_DOC`, which the README quotes). `env` defaults to `os.environ`;
    `properties` is a serving.properties file or a folder holding one (optional); `overrides`
    (command-line options, keyed like the file) win over both and are validated the same way.
    `packaged` (an artifact profile's limits, keyed like the file) takes the file's place.
    """
    env = os.environ if env is None else env
    from_file = read_properties(Path(properties)) if properties is not None else dict(packaged or {})
    from_env = read_environment(env)
    for key, setting in from_env.items():
        in_file = from_file.get(key)
        if in_file is not None and in_file.value.strip() != setting.value.strip():
            warn(f"{setting.describe()} overrides {in_file.describe()}: the environment wins over the file")
    return build_config({**from_file, **from_env, **(overrides or {})})


def build_config(settings: Mapping[str, Setting]) -> ServingConfig:
    """Validate merged settings; a bad value becomes a ConfigError naming what the user typed."""
    values: dict[str, object] = {}
    options: dict[str, str] = {}
    by_field: dict[str, Setting] = {}
    for key, setting in settings.items():
        field = KEY_FIELDS.get(key)
        if field is not None:
            values[field] = setting.value.strip()
            by_field[field] = setting
        elif key.startswith("option."):
            options[key[len("option."):]] = setting.value
    try:
        return ServingConfig(**values, options=options)
    except ValidationError as err:
        raise _config_error(err, by_field) from None


def _config_error(err: ValidationError, by_field: Mapping[str, Setting]) -> ConfigError:
    problems, hints = [], []
    for item in err.errors():
        if item["loc"]:
            field = str(item["loc"][0])
            setting = by_field.get(field)
            where = setting.describe() if setting else f"{FIELD_KEYS.get(field, field)}={item['input']!r}"
            allowed = ALLOWED.get(field, item["msg"])
            problems.append(f"{where} is not valid: expected {allowed}")
            default = ServingConfig.model_fields[field].default
            name = setting.name if setting else FIELD_KEYS.get(field, field)
            hints.append(f"set {name} to {allowed}" + (f", or unset it for the default ({default})"
                                                         if default is not None else ""))
        else:  # a rule across fields: name every setting it involves
            fields = str(item.get("ctx", {}).get("fields", "")).split(",")
            involved = [by_field[f].describe() for f in fields if f in by_field]
            problems.append(item["msg"] + (f" (set by {', '.join(involved)})" if involved else ""))
            hints.append("raise MAX_CONCURRENT_REQUESTS (job_queue_size) or lower MAX_BATCH_SIZE "
                         "(option.max_rolling_batch_size); defaults are 1000 and 256")
    return ConfigError("; ".join(problems), hint="; ".join(hints))
