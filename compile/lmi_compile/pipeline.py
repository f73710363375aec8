"""`lmi-compile run`: plan → fetch → quantize → compile → publish, one typed stage at a time.

Everything is written under a private work folder first; only `publish` touches the
destination, and it writes the manifest last. So a failing stage (a quality gate missed, a
bad model folder, an unreachable bucket) leaves nothing that a runtime would pick up.
Quantize and compile outputs are kept in the stage cache, keyed on their inputs, settings
and tool versions, so a re-run with the same recipe skips them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lmi_compile.plan import Plan, plan_recipe
from lmi_compile.plan.estimate import minutes
from lmi_compile.quantize.defaults import resolve as sized_for_device
from lmi_compile.quantize.report import QuantReport
from lmi_compile.recipe import Recipe
from lmi_compile.stage_cache import StageCache, stage_key
from lmi_compile.stages.fetch import fetch
from lmi_compile.stages.publish import ArtifactRef, publish
from lmi_compile.targets import torch_target, vendor_stage
from lmi_compile.workdir import new_work_folder
from lmi_runtime.artifact.folder import build_manifest, write_manifest
from lmi_runtime.artifact.manifest import Limits, ModelInfo, QuantizationInfo, TargetInfo
from lmi_runtime.backends.vendor import VENDOR_TARGETS
from lmi_runtime.errors import ConfigError
from lmi_runtime.storage.s3 import S3Options

Log = Callable[[str], None]


@dataclass
class RunResult:
    plan: Plan
    artifact: ArtifactRef
    cache_hits: list[str] = field(default_factory=list)


def output_uri(recipe: Recipe) -> str:
    return recipe.output.uri.replace("{name}", recipe.name)


def run_recipe(
    recipe: Recipe,
    *,
    instance_type: str | None = None,
    token: str | None = None,
    s3_options: S3Options | None = None,
    device: str = "cpu",
    log: Log = print,
) -> RunResult:
    plan = plan_recipe(recipe, instance_type=instance_type, token=token, device=device)
    vendor = plan.backend in VENDOR_TARGETS
    if vendor:
        vendor_stage.check(recipe, plan)  # before any download: unsupported combinations fail now
    elif plan.quantization == "fp8":
        raise ConfigError("fp8 is produced by ModelOpt for the trtllm target; the plan chose the torch target",
                          hint="set target.backend: trtllm, or quantize.method awq / smoothquant / static_int8")
    _log_estimates(plan, log)
    cache = StageCache(Path(recipe.output.cache_dir) if recipe.output.cache_dir else None)
    hits: list[str] = []
    work = new_work_folder()  # also removes the work folders of killed runs
    try:
        log(f"fetch: {recipe.source.uri}")
        model = fetch(recipe.source, work / "model", s3_options=s3_options, token=token)

        if vendor:
            compiled = _cached(cache, "compile", model.path, vendor_stage.settings(recipe, plan),
                               lambda out: vendor_stage.build(recipe, plan, model.path, out, log), work, hits, log)
            target, quantization = vendor_stage.target_info(recipe, plan), vendor_stage.quantization_info(recipe, plan)
        else:
            qspec, chosen = sized_for_device(recipe.quantize, device)
            if chosen and qspec.method != "none":
                log(f"quantize: sized for {device}: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))

            def quantize_into(out: Path) -> None:
                from lmi_compile.quantize.stage import quantize

                quantize(model.path, qspec, out, device=device)

            quantized = _cached(cache, "quantize", model.path, qspec, quantize_into, work, hits, log)
            report = QuantReport.load(quantized)
            _log_quality(report, log)

            def compile_into(out: Path) -> None:
                torch_target.build(quantized, out, tp_degree=plan.tp_degree)

            target_settings = {"backend": plan.backend, "tp_degree": plan.tp_degree, "dtype": plan.dtype}
            compiled = _cached(cache, "compile", quantized, target_settings, compile_into, work, hits, log)
            target, quantization = torch_target.describe(plan.tp_degree, plan.dtype), _quantization(report)

        artifact = work / "artifact"
        shutil.copytree(compiled, artifact)
        serving = serving_options(plan)
        (artifact / "serving.properties").write_text("".join(f"{k}={v}\n" for k, v in serving.items()))
        write_manifest(artifact, _manifest(artifact, recipe, plan, model.config, quantization, target, serving))
        log(f"publish: {output_uri(recipe)}")
        ref = publish(artifact, output_uri(recipe), s3_options=s3_options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RunResult(plan=plan, artifact=ref, cache_hits=hits)


def _cached(cache: StageCache, stage: str, source: Path, settings, produce, work: Path, hits: list[str], log: Log) -> Path:
    """Return the stage's output folder: from the cache, or produced now and stored there."""
    key = stage_key(stage, [source], settings)
    found = cache.get(key)
    if found is not None:
        hits.append(stage)
        log(f"{stage}: cached ({key[:12]})")
        return found
    log(f"{stage}: running")
    out = work / stage
    produce(out)
    return cache.put(key, out, stage=stage)


def _log_estimates(plan: Plan, log: Log) -> None:
    estimates = plan.estimates
    if estimates is not None:
        stages = ", ".join(f"{s.stage} {minutes(s.seconds)}" for s in estimates.stages)
        log(f"estimate on {estimates.device}: {stages}; total {minutes(estimates.total_seconds)}")
        for warning in estimates.warnings():
            log(f"warning: {warning}")


def _log_quality(report: QuantReport, log: Log) -> None:
    ppl = report.perplexity
    if ppl is not None:
        limit = "no limit" if ppl.max_relative_increase is None else f"limit {ppl.max_relative_increase:+.2%}"
        log(f"quality: perplexity {ppl.original:.3f} → {ppl.quantized:.3f} ({ppl.relative_increase:+.2%}, {limit})")


def serving_options(plan: Plan) -> dict[str, str]:
    """What an endpoint needs to serve the artifact as planned; shipped as serving.properties
    (LMI's convention, without option.model_id: the artifact's location is the model)."""
    return {
        "option.rolling_batch": plan.backend,
        "option.dtype": plan.dtype,
        "option.tensor_parallel_degree": str(plan.tp_degree),
        "option.max_rolling_batch_size": str(plan.max_batch_size),
        "job_queue_size": str(plan.max_concurrent_requests),
        "option.max_input_len": str(plan.max_input_len),
        "option.n_positions": str(plan.max_total_len),
    }


def _quantization(report: QuantReport) -> QuantizationInfo:
    return QuantizationInfo(method=report.method, settings=report.settings,
                            report=report.model_dump(mode="json", exclude={"method", "settings"}))


def _manifest(artifact: Path, recipe: Recipe, plan: Plan, config: dict, quantization: QuantizationInfo,
              target: TargetInfo, serving: dict[str, str]):
    return build_manifest(
        artifact,
        model=ModelInfo(
            source=recipe.source.uri,
            revision=recipe.source.revision,
            architecture=(config.get("architectures") or [None])[0],
        ),
        quantization=quantization,
        target=target,
        limits=Limits(
            max_batch_size=plan.max_batch_size,
            max_input_len=plan.max_input_len,
            max_total_len=plan.max_total_len,
            kv_cache=plan.kv_cache.model_dump(mode="json"),
        ),
        serving=serving,
    )
