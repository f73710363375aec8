"""What each stage of `lmi-compile run` will cost: time and peak memory, before anything runs.

A deliberately simple cost model. A forward pass costs `params × tokens × unit` seconds, where the
unit was measured on this project's 2-core CPU (SmolLM2-135M in float32: perplexity and AWQ runs)
and on an H100 (Llama-2-7B shape in bfloat16: `scripts/bench_quantize.py`, figures in
compile/lmi_compile/quantize/README.md); other GPUs scale by their bf16 throughput relative to
the H100, CPUs by their core count. Each method is a number of such passes over the calibration
tokens: AWQ re-runs every layer once per scale-grid point, GPTQ adds a per-layer solve that grows
with `in_features² × out_features`, SmoothQuant and static int8 are one pass or less. Byte-bound
stages (fetch, compile, publish) divide bytes by a typical rate. Planning for this machine's CPU,
its current load counts too: with a load of L on C cores a new process gets about C / (L + 1)
of them. Other users' load changes while a stage runs, so treat the figures as estimates.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from lmi_compile.plan.modelspec import ModelSpec
from lmi_compile.quantize import defaults, groups
from lmi_compile.recipe import Recipe
from lmi_runtime.hardware import Hardware

LONG_S = 600.0  # a stage longer than this gets a warning naming the setting that shortens it
MB = 1_000_000

# seconds per (parameter x token) of one forward pass; CPU figure for 2 cores, float32
CPU_PASS_UNIT = 1.6e-11
CPU_MEASURED_CORES = 2
H100_PASS_UNIT = 2.1e-14  # bfloat16; AWQ 44.4 s = 19 passes over 32 x 512 tokens of a 6.7 B model
# GPTQ's per-layer solve, seconds per (in_features² x out_features)
CPU_SOLVE_UNIT = 2.0e-10
H100_SOLVE_UNIT = 6.4e-13  # GPTQ 25.5 s on the 7B shape, minus its calibration pass
# rounding the weights (static int8, and the last step of every method), seconds per parameter
CPU_ROUND_UNIT = 7e-9
H100_ROUND_UNIT = 3e-10
AWQ_PASSES_PER_GRID_POINT = 0.9
# bf16 dense throughput relative to an H100 (published peak figures, rounded)
GPU_SPEED = {"H200": 1.0, "H100": 1.0, "A100": 0.32, "L40S": 0.37, "A10G": 0.13, "L4": 0.12, "T4": 0.07, "V100": 0.13}
BASE_RSS = 450 * MB  # python + torch + transformers, measured
# activation cache during calibration, in hidden-size float32 vectors per calibration token
CACHE_VECTORS = {"awq": 80, "gptq": 12, "smoothquant": 10, "static_int8": 0, "none": 0}
RATES = {"bundled": 100 * MB, "local": 300 * MB, "s3": 150 * MB, "hub": 50 * MB}  # bytes/s


class SizeChoice(BaseModel):
    setting: str
    value: str
    reason: str


class StageEstimate(BaseModel):
    stage: str
    seconds: float
    peak_memory_bytes: int
    basis: str  # what the figure is computed from
    shorten: str | None = None  # set when the stage is long: the setting that shortens it


class Estimates(BaseModel):
    device: str  # where quantization and evaluation run
    sizes: list[SizeChoice]  # calibration/evaluation sizes chosen for that device
    stages: list[StageEstimate]

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def warnings(self) -> list[str]:
        return [f"{s.stage} may take about {minutes(s.seconds)}: {s.shorten}" for s in self.stages if s.shorten]


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def quantize_device(hardware: Hardware, device: str | None = None) -> str:
    """Where quantization runs: the given device, else a GPU when the hardware has one."""
    return device or ("cuda" if hardware.kind == "cuda" else "cpu")


def estimate(recipe: Recipe, spec: ModelSpec, hardware: Hardware, device: str | None = None) -> Estimates:
    device = quantize_device(hardware, device)
    quant, chosen = defaults.resolve(recipe.quantize, device)
    why = defaults.for_device(device).why
    sizes = [SizeChoice(setting=f"quantize.{key}", value=value, reason=why) for key, value in chosen.items()]
    speed = _Speed(hardware, device)
    params = spec.num_parameters
    source_bytes = spec.weight_bytes(_dtype(spec.torch_dtype))
    work_bytes = params * (4 if device == "cpu" else 2)  # float32 on CPU, 16-bit on a GPU
    out_bytes = spec.weight_bytes("float32" if device == "cpu" else "bfloat16", quant.method,
                                  groups.group_size_for(quant.method, quant.group_size, spec.quantized_widths()),
                                  quant.symmetric) if quant.method != "none" else source_bytes
    kind = _source_kind(recipe.source.uri)

    stages = [StageEstimate(
        stage="fetch", seconds=source_bytes / RATES[kind] + source_bytes / RATES["local"],  # + checking
        peak_memory_bytes=BASE_RSS + (params * 4 if kind == "bundled" else 0),
        basis=f"{source_bytes / MB:,.0f} MB from {kind} at ~{RATES[kind] / MB:.0f} MB/s",
        shorten="fetch once into a folder or s3:// prefix near this machine and use that as source.uri",
    )]
    stages.append(_quantize(quant, spec, speed, device, work_bytes))
    stages.append(_evaluate(quant, spec, speed, device, work_bytes))
    stages.append(StageEstimate(
        stage="compile", seconds=2 * out_bytes / RATES["local"], peak_memory_bytes=BASE_RSS,
        basis=f"torch target: copy and hash {out_bytes / MB:,.0f} MB", shorten=None))
    dest = "s3" if recipe.output.uri.startswith("s3://") else "local"
    stages.append(StageEstimate(
        stage="publish", seconds=out_bytes / RATES["local"] + out_bytes / RATES[dest], peak_memory_bytes=BASE_RSS,
        basis=f"verify, then send {out_bytes / MB:,.0f} MB to {dest} at ~{RATES[dest] / MB:.0f} MB/s",
        shorten="raise LMI_S3_WORKERS and LMI_S3_PART_CONCURRENCY, or publish from a machine in the bucket's region"))
    for stage in stages:
        if stage.seconds <= LONG_S:
            stage.shorten = None
    return Estimates(device=speed.describe(), sizes=sizes, stages=stages)


class _Speed:
    """Seconds per unit of work on the device a stage runs on."""

    def __init__(self, hardware: Hardware, device: str):
        if device.startswith("cuda"):
            name = hardware.name if hardware.kind == "cuda" else "H100"
            factor = 1 / next((v for k, v in GPU_SPEED.items() if k in name.upper()), 0.3)
            self.pass_unit, self.solve_unit, self.round_unit = (
                H100_PASS_UNIT * factor, H100_SOLVE_UNIT * factor, H100_ROUND_UNIT * factor)
            self.name = f"cuda ({name})"
        else:
            cores = hardware.cores if hardware.kind == "cpu" else max(hardware.cores, CPU_MEASURED_CORES)
            busy = _busy_factor(cores) if hardware.instance_type is None else 1.0
            factor = CPU_MEASURED_CORES / min(max(cores, 1), 32) * busy
            self.pass_unit, self.solve_unit, self.round_unit = (
                CPU_PASS_UNIT * factor, CPU_SOLVE_UNIT * factor, CPU_ROUND_UNIT * factor)
            self.name = f"cpu ({cores} cores" + (f", busy: x{busy:.1f} for the current load)" if busy > 1 else ")")

    def describe(self) -> str:
        return self.name


def _busy_factor(cores: int) -> float:
    """How much slower than idle this machine's CPU is now: others' load shares the cores."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 1.0
    return max(1.0, (load + 1) / cores)


def _quantize(quant, spec: ModelSpec, speed: _Speed, device: str, work_bytes: int) -> StageEstimate:
    params, method = spec.num_parameters, quant.method
    tokens = quant.calibration.num_samples * quant.calibration.seq_len
    one_pass = speed.pass_unit * params * tokens
    rounding = speed.round_unit * params
    io = 3 * work_bytes / RATES["local"]  # load, save, reload
    cal = f"{quant.calibration.num_samples} x {quant.calibration.seq_len} calibration tokens"
    if method == "none":
        return StageEstimate(stage="quantize", seconds=work_bytes / RATES["local"], peak_memory_bytes=BASE_RSS,
                             basis="method none: a copy")
    if method == "awq":
        passes = 1 + AWQ_PASSES_PER_GRID_POINT * quant.awq_grid
        seconds, basis = one_pass * passes, f"{cal}, {passes:.0f} passes (grid {quant.awq_grid})"
        shorten = (f"lower quantize.awq_grid (now {quant.awq_grid}) or quantize.calibration.num_samples "
                   f"(now {quant.calibration.num_samples}) / seq_len (now {quant.calibration.seq_len})")
    elif method == "gptq":
        solve = speed.solve_unit * spec.num_layers * sum(l.in_features ** 2 * l.out_features * l.copies
                                                         for l in spec.layer_linears())
        seconds, basis = one_pass + solve, f"{cal}, 1 pass + the per-layer solve ({solve:.0f} s)"
        shorten = (f"lower quantize.calibration.num_samples (now {quant.calibration.num_samples}) "
                   f"or seq_len (now {quant.calibration.seq_len})")
    elif method == "smoothquant":
        seconds, basis = 2 * one_pass, f"{cal}, 2 passes"
        shorten = f"lower quantize.calibration.num_samples (now {quant.calibration.num_samples})"
    else:
        seconds, basis, shorten = 0.0, "round to nearest, no calibration", None
    if device == "cpu" and shorten:
        shorten += ", or quantize on a GPU (--device cuda)"
    hidden_cache = tokens * spec.hidden_size * 4 * CACHE_VECTORS.get(method, 0)
    resident = 2 * work_bytes if device == "cpu" else work_bytes
    return StageEstimate(stage="quantize", seconds=seconds + rounding + io, basis=basis, shorten=shorten,
                         peak_memory_bytes=BASE_RSS + resident + hidden_cache)


def _evaluate(quant, spec: ModelSpec, speed: _Speed, device: str, work_bytes: int) -> StageEstimate:
    if quant.method == "none":
        return StageEstimate(stage="evaluate", seconds=0, peak_memory_bytes=0, basis="method none: no evaluation")
    tokens, batch = quant.quality.max_tokens, quant.quality.batch_size
    logits = batch * quant.quality.seq_len * spec.vocab_size * 4 * 3  # logits, float copy, softmax
    return StageEstimate(
        stage="evaluate", seconds=2 * speed.pass_unit * spec.num_parameters * tokens,
        peak_memory_bytes=BASE_RSS + work_bytes + logits,
        basis=f"perplexity of the original and the quantized model on {tokens:,} tokens "
              f"({tokens // quant.quality.seq_len} windows of {quant.quality.seq_len}, {batch} per pass)",
        shorten=f"lower quantize.quality.max_tokens (now {tokens})")


def _source_kind(uri: str) -> str:
    if uri.startswith("bundled://"):
        return "bundled"
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith((".", "/", "~")):
        return "local"
    return "hub"


def _dtype(name: str | None) -> str:
    return name if name in ("float16", "bfloat16", "float32") else "bfloat16"
