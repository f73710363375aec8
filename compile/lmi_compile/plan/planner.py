"""`make_plan`: from a recipe, a model's config.json and the hardware, every serving decision
with its reason. Pure (no probing, no downloads) so that it can be tested by hand arithmetic;
`plan_recipe` adds the I/O."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from lmi_compile.plan.backend import choose_backend, refuse_encoder_decoder
from lmi_compile.plan.estimate import Estimates, estimate
from lmi_compile.plan.instances import INSTANCES, instance_hardware
from lmi_compile.plan.memory import KvCachePlan, kv_cache_plan
from lmi_compile.plan.model_config import read_model_config
from lmi_compile.plan.modelspec import ModelSpec
from lmi_compile.plan.parallel import choose_tp, heads_text, valid_tp_degrees
from lmi_compile.quantize import groups
from lmi_compile.recipe import LimitsSpec, Recipe
from lmi_runtime.errors import ConfigError
from lmi_runtime.hardware import GiB, Hardware, probe

# LMI's defaults: TensorRT-LLM max_input_len 1024 / max_output_len 512 / max_num_tokens 16384;
# Neuron n_positions = min(max_position_embeddings, 4096).
TRTLLM_INPUT, TRTLLM_OUTPUT, TRTLLM_NUM_TOKENS = 1024, 512, 16384
NEURON_MAX_POSITIONS = 4096
DEFAULT_OUTPUT = 512
TORCH_NUM_TOKENS = 8192  # prefill chunk of the torch backend
FALLBACK_POSITIONS = 2048


class Decision(BaseModel):
    decision: str
    value: str
    reason: str


class PlanModel(BaseModel):
    source: str
    revision: str | None
    architecture: str | None
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int | None


class WeightsPlan(BaseModel):
    parameters: int
    dtype: str
    quantization: str
    bytes: int
    bytes_per_device: int
    group_size: int | None = None  # input columns per scale (awq, gptq), as the quantizer will pick it


class Plan(BaseModel):
    model: PlanModel
    hardware: Hardware
    backend: str
    tp_degree: int
    pp_degree: int
    min_tp_degree: int
    dtype: str
    quantization: str
    max_batch_size: int
    max_concurrent_requests: int
    max_input_len: int
    max_output_len: int
    max_total_len: int
    max_num_tokens: int
    weights: WeightsPlan
    kv_cache: KvCachePlan
    reasons: list[Decision]
    estimates: Estimates | None = None  # time and peak memory of each pipeline stage


def plan_recipe(recipe: Recipe, instance_type: str | None = None, token: str | None = None,
                device: str | None = None) -> Plan:
    """Plan a recipe for `instance_type` (or recipe.target.instance_type), else for this machine."""
    config = read_model_config(recipe.source.uri, recipe.source.revision, token)
    wanted = instance_type or recipe.target.instance_type
    if wanted:
        hardware = instance_hardware(wanted)
        why = "AWS's published figures for " + hardware.instance_type + (" (--for)" if instance_type else " (recipe)")
    else:
        hardware = probe()
        why = ("this machine: no NVIDIA GPU or Neuron device found, so its CPU and RAM" if hardware.kind == "cpu"
               else f"this machine, probed with {hardware.source}")
    return make_plan(recipe, config, hardware, hardware_reason=why, device=device)


def choose_dtype(requested: str, hardware: Hardware, spec: ModelSpec) -> tuple[str, str]:
    cc = float(hardware.compute_capability) if hardware.compute_capability else None
    if requested != "auto":
        if requested == "bfloat16" and cc is not None and cc < 8.0:
            raise ConfigError(f"bfloat16 needs an sm_80+ GPU; {hardware.name} is sm_{hardware.compute_capability}",
                              hint="set dtype to float16 (or auto)")
        return requested, "requested"
    if hardware.kind == "cuda" and cc is not None and cc >= 8.0:
        return "bfloat16", f"auto: {hardware.arch} ≥ sm_80 computes bfloat16 natively (fp32's range, no overflow)"
    note = f"; note: the checkpoint is {spec.torch_dtype}, watch for overflow" if spec.torch_dtype == "bfloat16" else ""
    if hardware.kind == "cuda":
        return "float16", f"auto: {hardware.arch} predates bfloat16 support (sm_80){note}"
    if hardware.kind == "neuron":
        return "float16", f"auto: LMI's Neuron default (fp16 auto-cast){note}"
    return "float32", "auto: CPU, where half-precision matmuls are slow or missing"


def choose_lengths(backend: str, spec: ModelSpec, limits: LimitsSpec) -> tuple[int, int, int, list[Decision]]:
    """(max_input_len, max_output_len, max_total_len, reasons); input + output ≤ total ≤ positions."""
    positions = spec.max_position_embeddings or FALLBACK_POSITIONS
    pos_note = "" if spec.max_position_embeddings else f" (config.json gives no context length; assuming {FALLBACK_POSITIONS})"
    given_in, given_out, given_total = limits.max_input_len, limits.max_output_len, limits.max_total_len
    if backend == "trtllm":
        out = given_out or min(TRTLLM_OUTPUT, positions // 2)
        inp = given_in or min(TRTLLM_INPUT, positions - out)
        total = given_total or min(inp + out, positions)
        why = "LMI's TensorRT-LLM defaults (max_input_len 1024, max_output_len 512) unless set; engines are built for them"
    else:
        if given_total:
            total = given_total
        elif backend == "neuron":
            total = min(positions, NEURON_MAX_POSITIONS)
        else:
            total = positions
        out = given_out or min(DEFAULT_OUTPUT, total // 2)
        inp = given_in or total - out
        why = ("n_positions = min(max_position_embeddings, 4096) as LMI does on Neuron; prompts are bucketed up to it"
               if backend == "neuron" else "the model's context length")
        why += f"; output budget {out}, the rest for the prompt" if not (given_in and given_out) else ""
    if total > positions:
        raise ConfigError(f"max total length {total} exceeds the model's max_position_embeddings ({positions})",
                          hint=f"lower max_total_len / max_input_len + max_output_len to ≤ {positions}")
    if inp + out > total:
        raise ConfigError(f"max_input_len {inp} + max_output_len {out} exceeds max_total_len {total}",
                          hint="lower one of them, or raise max_total_len (n_positions)")
    reason = why + pos_note
    return inp, out, total, [Decision(decision="max_input_len / max_output_len / max_total_len",
                                      value=f"{inp} / {out} / {total}", reason=reason)]


def make_plan(recipe: Recipe, model_config: dict[str, Any], hardware: Hardware,
              hardware_reason: str = "given", device: str | None = None) -> Plan:
    """`device`: where quantization runs (default: a GPU when the hardware has one, else the CPU)."""
    target, limits, quant = recipe.target, recipe.limits, recipe.quantize
    refuse_encoder_decoder(model_config, target.backend)
    spec = ModelSpec.from_config(model_config)
    reasons = [Decision(decision="hardware", value=hardware.describe(), reason=hardware_reason)]

    backend, why = choose_backend(target.backend, hardware, spec, quant.method)
    reasons.append(Decision(decision="backend", value=backend, reason=why))
    dtype, why = choose_dtype(target.dtype, hardware, spec)
    reasons.append(Decision(decision="dtype", value=dtype, reason=why))

    group = groups.group_size_for(quant.method, quant.group_size, spec.quantized_widths())
    weight_bytes = spec.weight_bytes(dtype, quant.method, group, quant.symmetric)
    quant_text = quant.method if quant.method == "none" else f"{quant.method} ({quant.bits}-bit)"
    reasons.append(Decision(decision="weights", value=f"{weight_bytes / GiB:.2f} GiB",
                            reason=f"{spec.num_parameters:,} parameters in {dtype}, quantization {quant_text}"))

    inp, out, total, length_reasons = choose_lengths(backend, spec, limits)
    reasons += length_reasons
    step = limits.max_num_tokens or {"trtllm": TRTLLM_NUM_TOKENS, "neuron": total}.get(backend, TORCH_NUM_TOKENS)
    reasons.append(Decision(
        decision="max_num_tokens", value=str(step),
        reason="set" if limits.max_num_tokens else {
            "trtllm": "LMI's TensorRT-LLM default (tokens per forward step)",
            "neuron": "one prompt of max_total_len per context-encoding step"}.get(backend, "the torch backend's prefill chunk")))

    pp = target.pp_degree
    units = hardware.parallel_units // pp
    unit_name = {"cuda": "GPUs", "neuron": "NeuronCores", "cpu": "CPU process"}[hardware.kind]
    if units < 1:
        raise ConfigError(f"pipeline degree {pp} needs {pp} devices; the hardware has {hardware.parallel_units}",
                          hint="lower target.pp_degree")

    def budget(tp: int, hw: Hardware = hardware, weight_bytes: int = weight_bytes) -> KvCachePlan:
        return kv_cache_plan(spec, hw, weight_bytes=weight_bytes, dtype=dtype, tp=tp, pp=pp,
                             utilization=limits.gpu_memory_utilization, max_num_tokens=step,
                             max_batch_size=limits.max_batch_size, max_total_len=total)

    tp, smallest, why = choose_tp(target.tp_degree, spec, units, unit_name, lambda t: budget(t).fits(total))
    kv = budget(tp)
    if not kv.fits(total):
        raise _too_large(spec, hardware, kv, tp, total, smallest, weight_bytes, dtype, budget)
    reasons.append(Decision(decision="tp_degree", value=str(tp), reason=why))
    reasons.append(Decision(
        decision="kv_cache", value=f"{kv.tokens:,} tokens",
        reason=(f"{kv.memory_per_device / GiB:.1f} GiB × {kv.utilization} − weights {kv.weights_per_device / GiB:.2f} GiB"
                f" − reserve {kv.activation_reserve / GiB:.2f} GiB = {kv.bytes_per_device / GiB:.2f} GiB per device;"
                f" {kv.bytes_per_token:,} bytes per token per device ({kv.kv_heads_per_device} KV heads of"
                f" {spec.head_dim} per device × {spec.num_layers} layers × K and V)")))

    batch = limits.max_batch_size
    if backend == "neuron" and kv.max_full_sequences < batch:
        batch = max(1, kv.max_full_sequences)
        why = (f"Neuron allocates KV for batch × n_positions up front: {kv.max_full_sequences} sequences of {total} "
               f"tokens fit, so the requested {limits.max_batch_size} is lowered")
    else:
        why = (f"requested; {kv.max_full_sequences} sequences of {total} tokens fit in the KV cache at once"
               + ("" if backend == "neuron" else " (paged: shorter sequences share it)"))
    reasons.append(Decision(decision="max_batch_size", value=str(batch), reason=why))

    return Plan(
        model=PlanModel(source=recipe.source.uri, revision=recipe.source.revision, architecture=spec.architecture,
                        model_type=spec.model_type, num_layers=spec.num_layers, num_heads=spec.num_heads,
                        num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                        max_position_embeddings=spec.max_position_embeddings),
        hardware=hardware, backend=backend, tp_degree=tp, pp_degree=pp, min_tp_degree=smallest or tp, dtype=dtype,
        quantization=quant.method, max_batch_size=batch, max_concurrent_requests=limits.max_concurrent_requests,
        max_input_len=inp, max_output_len=out, max_total_len=total, max_num_tokens=step,
        weights=WeightsPlan(parameters=spec.num_parameters, dtype=dtype, quantization=quant.method,
                            bytes=weight_bytes, bytes_per_device=kv.weights_per_device, group_size=group),
        kv_cache=kv, reasons=reasons, estimates=estimate(recipe, spec, hardware, device),
    )


def _too_large(spec: ModelSpec, hardware: Hardware, kv: KvCachePlan, tp: int, total: int, smallest: int | None,
               weight_bytes: int, dtype: str, budget: Callable[..., KvCachePlan]) -> ConfigError:
    need = kv.weights_per_device + kv.activation_reserve + total * kv.bytes_per_token
    numbers = (f"weights {weight_bytes / GiB:.1f} GiB ({kv.weights_per_device / GiB:.1f} GiB per device at TP {tp}) "
               f"+ reserve {kv.activation_reserve / GiB:.1f} GiB + one {total}-token sequence "
               f"{total * kv.bytes_per_token / GiB:.2f} GiB = {need / GiB:.1f} GiB, but a device offers "
               f"{kv.usable_bytes / GiB:.1f} GiB ({kv.memory_per_device / GiB:.0f} GiB × {kv.utilization})")
    if smallest is not None:  # an explicit TP that is too small
        return ConfigError(f"the model does not fit at TP {tp}: {numbers}",
                           hint=f"use tensor parallel degree {smallest} or more (or 'max')")
    own_memory = hardware.parallel_units * hardware.memory_per_unit
    bigger = []
    for name in INSTANCES:
        other = instance_hardware(name)
        memory = other.parallel_units * other.memory_per_unit
        if other.kind != hardware.kind or memory <= own_memory:
            continue
        if budget(valid_tp_degrees(spec, other.parallel_units)[-1], other).fits(total):
            bigger.append((memory, other.cores, other.instance_type))
    options = ", ".join(name for _, _, name in sorted(bigger)[:3])
    hint = f"use a larger instance ({options})" if options else "use a larger instance"
    awq_group = groups.auto_group_size(spec.quantized_widths())
    if awq_group is not None:
        awq_bytes = spec.weight_bytes(dtype, "awq", awq_group, symmetric=False)
        hint += (f", or quantize: AWQ 4-bit weights take {awq_bytes / GiB:.1f} GiB and fit here at TP {tp} "
                 "(quantize.method: awq)" if budget(tp, weight_bytes=awq_bytes).fits(total) else
                 f"; 4-bit quantization (AWQ: {awq_bytes / GiB:.1f} GiB of weights) would still not fit here")
    return ConfigError(f"the model does not fit on {hardware.describe()} even at TP {tp}, the largest degree "
                       f"its {heads_text(spec)} allow there: {numbers}", hint=hint)


__all__ = ["Decision", "Plan", "choose_dtype", "choose_lengths", "make_plan", "plan_recipe"]
