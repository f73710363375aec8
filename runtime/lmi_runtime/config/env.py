"""Environment variables → settings, with LMI's names and the TGI/SageMaker aliases users carry over.

Within the environment, the most specific name wins: `OPTION_<NAME>` over the simplified LMI
variable (`HF_MODEL_ID`, `MAX_BATCH_SIZE`, …) over a TGI/SageMaker alias (`SM_NUM_GPUS`, …);
an alias is applied only when no LMI name sets the same key. Two names that set one key to
different values get a warning that says which one won.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from lmi_runtime.config.schema import KNOWN_OPTIONS
from lmi_runtime.config.settings import Setting
from lmi_runtime.config.suggest import warn, warn_unknown
from lmi_runtime.errors import ConfigError

# The simplified LMI variables.
LMI_VARIABLES: dict[str, str] = {
    "HF_MODEL_ID": "option.model_id",
    "HF_REVISION": "option.revision",
    "HF_MODEL_TRUST_REMOTE_CODE": "option.trust_remote_code",
    "TENSOR_PARALLEL_DEGREE": "option.tensor_parallel_degree",
    "MAX_BATCH_SIZE": "option.max_rolling_batch_size",
    "MAX_CONCURRENT_REQUESTS": "job_queue_size",
}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _negate_bool(name: str, value: str) -> str:
    """ENABLE_CUDA_GRAPHS=true means enforce_eager=false."""
    text = value.strip().lower()
    if text in _TRUE | _FALSE:
        return "false" if text in _TRUE else "true"
    raise ConfigError(f"{name}={value!r} (environment variable) is not valid: expected true or false",
                      hint=f"set {name}=true or {name}=false, or unset it (CUDA graphs stay on)")


# TGI / SageMaker names: (key, value transform).
ALIAS_VARIABLES: dict[str, tuple[str, Callable[[str, str], str] | None]] = {
    "SM_NUM_GPUS": ("option.tensor_parallel_degree", None),
    "HF_MODEL_QUANTIZE": ("option.quantize", None),
    "MAX_BATCH_PREFILL_TOKENS": ("option.max_rolling_batch_prefill_tokens", None),
    "CUDA_MEMORY_FRACTION": ("option.gpu_memory_utilization", None),
    "ENABLE_CUDA_GRAPHS": ("option.enforce_eager", _negate_bool),
}
ORIGIN = "environment variable"


def read_environment(env: Mapping[str, str]) -> dict[str, Setting]:
    """The settings the environment makes, keyed like serving.properties."""
    layers: list[dict[str, Setting]] = [{}, {}, {}]  # alias < LMI variable < OPTION_*
    for name, value in env.items():
        if name == "OPTION_ENGINE":  # LMI's variable for the top-level `engine` key
            layers[2]["engine"] = Setting("engine", value, ORIGIN, name)
        elif name.startswith("OPTION_") and len(name) > len("OPTION_"):
            option = name[len("OPTION_"):].lower()
            if option not in KNOWN_OPTIONS:
                warn_unknown(name, (f"OPTION_{k.upper()}" for k in KNOWN_OPTIONS), "the environment",
                             "kept as a pass-through option")
            layers[2][f"option.{option}"] = Setting(f"option.{option}", value, ORIGIN, name)
        elif name in LMI_VARIABLES:
            layers[1][LMI_VARIABLES[name]] = Setting(LMI_VARIABLES[name], value, ORIGIN, name)
        elif name in ALIAS_VARIABLES:
            key, transform = ALIAS_VARIABLES[name]
            layers[0][key] = Setting(key, transform(name, value) if transform else value, ORIGIN, name)
    if env.get("HF_TOKEN"):
        layers[2]["HF_TOKEN"] = Setting("HF_TOKEN", env["HF_TOKEN"], ORIGIN, "HF_TOKEN", secret=True)
    merged: dict[str, Setting] = {}
    for layer in layers:
        for key, setting in layer.items():
            overridden = merged.get(key)
            if overridden is not None and overridden.value.strip() != setting.value.strip():
                warn(f"{setting.name} and {overridden.name} both set {key}; using {setting.describe()}")
            merged[key] = setting
    return merged
