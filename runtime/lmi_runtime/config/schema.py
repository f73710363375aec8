"""`ServingConfig`: everything a deployment can set, typed, with LMI's names and defaults.

Every field is addressed by its serving.properties key (`FIELD_KEYS`), which is also the key the
environment loader produces, so that one validation path serves files, variables and code.
Options we do not model are kept verbatim in `options` (nothing a user wrote is lost).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

RollingBatch = Literal["auto", "torch", "trtllm", "neuron", "disable"]
QuantizeMethod = Literal["none", "awq", "gptq", "smoothquant", "static_int8", "fp8"]
Dtype = Literal["auto", "float16", "bfloat16", "float32"]
Engine = Literal["Python", "MPI", "DeepSpeed", "FasterTransformer"]

# LMI's other names for the same choices (lower-case input → our value).
ROLLING_BATCH_ALIASES = {
    "tnx": "neuron",  # transformers-neuronx, LMI's Neuron rolling batch
    "transformers-neuronx": "neuron",
    "lmi-dist": "torch",  # LMI's own GPU engine: our torch backend takes its place
    "vllm": "torch",
    "scheduler": "torch",
    "false": "disable",
}
DTYPE_ALIASES = {"fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp32": "float32", "float": "float32"}
QUANTIZE_ALIASES = {"": "none", "false": "none", "int8": "static_int8"}

# Field name → serving.properties key. HF_TOKEN is read from the environment only: a secret
# does not belong in a file that is packaged with an artifact.
FIELD_KEYS: dict[str, str] = {
    "model_id": "option.model_id",
    "revision": "option.revision",
    "hf_token": "HF_TOKEN",
    "trust_remote_code": "option.trust_remote_code",
    "tensor_parallel_degree": "option.tensor_parallel_degree",
    "pipeline_parallel_degree": "option.pipeline_parallel_degree",
    "max_rolling_batch_size": "option.max_rolling_batch_size",
    "job_queue_size": "job_queue_size",
    "rolling_batch": "option.rolling_batch",
    "quantize": "option.quantize",
    "dtype": "option.dtype",
    "max_input_len": "option.max_input_len",
    "max_output_len": "option.max_output_len",
    "n_positions": "option.n_positions",
    "max_rolling_batch_prefill_tokens": "option.max_rolling_batch_prefill_tokens",
    "engine": "engine",
    "gpu_memory_utilization": "option.gpu_memory_utilization",
    "enforce_eager": "option.enforce_eager",
}
KEY_FIELDS = {key: field for field, key in FIELD_KEYS.items()}

# LMI options we do not interpret but recognise (kept in `options` without a warning).
PASSTHROUGH_OPTIONS = frozenset(
    {
        "entrypoint", "output_formatter", "max_num_tokens", "device_map", "low_cpu_mem_usage",
        "max_model_len", "model_loading_timeout", "enable_streaming", "tgi_compat", "mpi_mode",
        "task", "load_format", "speculative_draft_model", "draft_model_tp_size", "enable_lora",
        "max_loras", "max_lora_rank", "max_cpu_loras", "paged_attention", "neuron_optimize_level",
        "context_length_estimate", "compiled_graph_path", "save_mp_checkpoint_path",
        "batch_size", "amp", "chat_template", "enable_chunked_prefill", "kv_cache_dtype",
        # lmi-serve's own engine settings (see lmi_runtime.config.engine_settings)
        "device", "backend", "kv_cache_gib", "max_new_tokens", "served_model_name", "quantized_kernels",
        "kernel_cache", "recompile",
    }
)
KNOWN_OPTIONS = frozenset(k[len("option."):] for k in FIELD_KEYS.values() if k.startswith("option.")) | PASSTHROUGH_OPTIONS
# Top-level djl-serving keys: modelled ones, and worker settings that lmi-serve has no use for.
TOP_LEVEL_KEYS = frozenset({"engine", "job_queue_size"})
IGNORED_TOP_LEVEL = frozenset(
    {"minWorkers", "maxWorkers", "gpu.minWorkers", "gpu.maxWorkers", "batch_size", "max_batch_delay",
     "max_idle_time", "load_on_devices", "required_memory_mb", "log_model_metric", "metrics_aggregation"}
)

_WHOLE = "a whole number ≥ 1"
# What each field accepts, in words, for error messages (Literal fields list their choices).
ALLOWED: dict[str, str] = {
    "tensor_parallel_degree": "'max' or a whole number ≥ 1",
    "pipeline_parallel_degree": _WHOLE,
    "max_rolling_batch_size": _WHOLE,
    "job_queue_size": _WHOLE,
    "max_input_len": _WHOLE,
    "max_output_len": _WHOLE,
    "n_positions": _WHOLE,
    "max_rolling_batch_prefill_tokens": _WHOLE,
    "gpu_memory_utilization": "a fraction in (0, 1], e.g. 0.9",
    "trust_remote_code": "true or false",
    "enforce_eager": "true or false",
    "rolling_batch": ", ".join(get_args(RollingBatch)) + " (aliases: " + ", ".join(ROLLING_BATCH_ALIASES) + ")",
    "quantize": ", ".join(get_args(QuantizeMethod)),
    "dtype": ", ".join(get_args(Dtype)) + " (or fp16, bf16, fp32)",
    "engine": ", ".join(get_args(Engine)),
}


def check_queue_holds_batch(max_queue: int, max_batch_size: int,
                            names: tuple[str, str] = ("job_queue_size (MAX_CONCURRENT_REQUESTS)",
                                                      "max_rolling_batch_size (MAX_BATCH_SIZE)")) -> None:
    """The request queue must hold at least one full batch: the one rule for LMI's settings and
    the recipe's limits, each naming the two settings its own way. Raised inside a pydantic
    validator; `fields` tells the serving-config loader which settings to name."""
    if max_queue < max_batch_size:
        raise PydanticCustomError(
            "queue_below_batch",
            "{queue_name} = {queue} is below {batch_name} = {batch}: the queue must hold at least one full batch",
            {"queue_name": names[0], "queue": max_queue, "batch_name": names[1], "batch": max_batch_size,
             "fields": "job_queue_size,max_rolling_batch_size"},
        )


class ServingConfig(BaseModel):
    """One deployment's settings. Build it with `lmi_runtime.config.load_serving_config` to get
    LMI's environment variables and serving.properties with their precedence and clear errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str | None = None
    revision: str | None = None
    hf_token: SecretStr | None = None
    trust_remote_code: bool = False
    tensor_parallel_degree: int | Literal["max"] = "max"
    pipeline_parallel_degree: int = Field(1, ge=1)
    max_rolling_batch_size: int = Field(256, ge=1)
    job_queue_size: int = Field(1000, ge=1)
    rolling_batch: RollingBatch = "auto"
    quantize: QuantizeMethod = "none"
    dtype: Dtype = "auto"
    max_input_len: int | None = Field(None, ge=1)
    max_output_len: int | None = Field(None, ge=1)
    n_positions: int | None = Field(None, ge=1)
    max_rolling_batch_prefill_tokens: int | None = Field(None, ge=1)
    engine: Engine = "Python"
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = False
    options: dict[str, str] = Field(default_factory=dict)  # every other option.<name>, by name

    @field_validator("tensor_parallel_degree", mode="before")
    @classmethod
    def _tp(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "max":
                return "max"
            if not text.isdigit() or int(text) < 1:
                raise ValueError(ALLOWED["tensor_parallel_degree"])
            return int(text)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(ALLOWED["tensor_parallel_degree"])
        return value

    @field_validator("rolling_batch", "dtype", "quantize", mode="before")
    @classmethod
    def _aliases(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        aliases = {"rolling_batch": ROLLING_BATCH_ALIASES, "dtype": DTYPE_ALIASES, "quantize": QUANTIZE_ALIASES}
        text = value.strip().lower()
        return aliases[info.field_name].get(text, text)

    @field_validator("engine", mode="before")
    @classmethod
    def _engine(cls, value: Any) -> Any:
        names = {name.lower(): name for name in get_args(Engine)}
        return names.get(value.strip().lower(), value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _queue_holds_batch(self) -> "ServingConfig":
        check_queue_holds_batch(self.job_queue_size, self.max_rolling_batch_size)
        return self

    @property
    def mpi_mode(self) -> bool:
        """`engine=MPI` is LMI's Python engine started once per rank (MPI mode)."""
        return self.engine == "MPI"

    def to_properties(self, include_model_id: bool = True) -> dict[str, str]:
        """The serving.properties lines that reproduce this configuration (never the token).
        `include_model_id=False` is what a prepared artifact ships: its location is the model."""
        out: dict[str, str] = {}
        defaults = type(self)()
        for field, key in FIELD_KEYS.items():
            value = getattr(self, field)
            if field == "hf_token" or value is None or value == getattr(defaults, field):
                continue
            if field == "model_id" and not include_model_id:
                continue
            out[key] = str(value).lower() if isinstance(value, bool) else str(value)
        out.update({f"option.{name}": value for name, value in self.options.items()})
        return out
