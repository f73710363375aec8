"""A profile's limits record as serving settings: the `serving.properties` an artifact ships
(LMI's convention, without option.model_id: the artifact's location is the model) and the
layer `lmi-serve` puts below the environment and its CLI options. One source, so the file, the
manifest and the running engine cannot disagree."""

from __future__ import annotations

from lmi_runtime.artifact.manifest import Profile
from lmi_runtime.config import ServingConfig
from lmi_runtime.config.settings import Setting


def serving_config(profile: Profile) -> ServingConfig:
    limits, target = profile.limits, profile.target
    values = {
        "rolling_batch": target.backend, "dtype": target.dtype, "tensor_parallel_degree": target.tp_degree,
        "pipeline_parallel_degree": target.pp_degree, "max_rolling_batch_size": limits.max_batch_size,
        "job_queue_size": limits.max_concurrent_requests, "max_input_len": limits.max_input_len,
        "n_positions": limits.max_total_len, "max_rolling_batch_prefill_tokens": limits.max_num_tokens,
        "gpu_memory_utilization": limits.kv_cache.utilization if limits.kv_cache is not None else None,
    }
    return ServingConfig(**{k: v for k, v in values.items() if v is not None})


def serving_properties(profile: Profile) -> dict[str, str]:
    return serving_config(profile).to_properties(include_model_id=False)


def properties_text(profile: Profile) -> str:
    return "".join(f"{key}={value}\n" for key, value in serving_properties(profile).items())


def profile_settings(profile: Profile) -> dict[str, Setting]:
    """The record as settings keyed like serving.properties, each naming where it came from."""
    origin = f"the limits of the artifact's profile {profile.name}"
    return {key: Setting(key, value, origin, key) for key, value in serving_properties(profile).items()}
