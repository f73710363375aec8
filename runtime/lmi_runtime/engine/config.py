"""The engine's own settings. `lmi-serve` builds one from CLI options with the LMI environment
names as fallbacks (see `lmi_runtime.config.engine_settings`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineConfig:
    max_batch_size: int = 256  # MAX_BATCH_SIZE / option.max_rolling_batch_size: running sequences
    max_queue: int = 1000  # MAX_CONCURRENT_REQUESTS / job_queue_size: waiting requests
    max_model_len: int | None = None  # prompt + output tokens; None: min(max_position_embeddings, 4096)
    max_new_tokens: int = 30  # default when a request does not say (LMI's default)
    max_prefill_tokens: int | None = None  # option.max_rolling_batch_prefill_tokens: prompt tokens per step; None: the backend's
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: the checkpoint's, float32 on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    backend: str = "auto"  # auto | torch | transformers
    kv_cache_gib: float | None = None  # KV-cache pool; None: the artifact profile's planned budget, else free GPU memory (see gpu_memory_utilization), else 2 GiB on CPU
    gpu_memory_utilization: float = 0.9  # share of GPU memory weights + KV cache + activations may use
    enforce_eager: bool = False  # no compiled layers or CUDA graphs (debugging, or to save start time)
    kv_block_size: int = 16
    trust_remote_code: bool = False
    served_model_name: str | None = None
    tensor_parallel_degree: int | None = None  # must match the artifact's when set; None: the artifact's
    quantized_kernels: str = "auto"  # auto | on | off: quantized layers stay packed (auto: on CUDA; CPU serves them dequantized)
    quantize: str = "none"  # OPTION_QUANTIZE: a 16-bit checkpoint's layers quantized at load (fp8, static_int8)
    kernel_cache: str | None = None  # folder of compiled code (kernels.cache); None: the artifact's if it ships one; "none": no cache
    recompile: bool = False  # a kernel cache built for another GPU or library versions is rebuilt instead of refused

    def __post_init__(self) -> None:
        from lmi_runtime.errors import ConfigError

        for name in ("max_batch_size", "max_queue", "max_new_tokens", "kv_block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_prefill_tokens is not None and self.max_prefill_tokens < 1:
            raise ConfigError(f"max_prefill_tokens must be at least 1, got {self.max_prefill_tokens}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ConfigError(f"max_model_len must be at least 2, got {self.max_model_len}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ConfigError(f"kv_cache_gib must be positive, got {self.kv_cache_gib}")
        if self.quantized_kernels not in ("auto", "on", "off"):
            raise ConfigError(f"unknown quantized_kernels '{self.quantized_kernels}'", hint="use one of: auto, on, off")
        if self.backend not in ("auto", "torch", "transformers"):
            raise ConfigError(
                f"unknown backend '{self.backend}'", hint="use one of: auto, torch, transformers"
            )
