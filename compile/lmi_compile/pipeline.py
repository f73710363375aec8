"""`lmi-compile run`: plan → fetch → quantize → compile → publish, one typed stage at a time.

Everything is written under a private work folder first; only `publish` touches the
destination, and it writes the manifest last. The run's result is one *profile* of the model
(backend, precision, hardware, limits); when the destination already holds an artifact of the
same model (same config.json digest), the profile is added to it (or replaces the one of the
same name) under `profiles/<name>/`: only its own files are sent, and the manifest, merging the
profiles, is written last. So a failing stage (a quality gate missed, a
bad model folder, an unreachable bucket) leaves nothing that a runtime would pick up.
Fetch, quantize and compile outputs are kept in the stage cache, keyed on their inputs,
settings and tool versions, so a re-run with the same recipe skips them, and a run killed in any
stage resumes from the last stage it finished.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmi_compile.plan import Plan
from lmi_compile.plan.estimate import minutes
from lmi_compile.quantize.defaults import resolve as sized_for_device
from lmi_compile.quantize.report import QuantReport
from lmi_compile.recipe import Recipe
from lmi_compile.stage_cache import StageCache, stage_key
from lmi_compile.stages.compile import compile_model, compile_settings, target_info
from lmi_compile.stages.fetch import fetch, source_identity
from lmi_compile.stages.plan import checked_plan
from lmi_compile.stages.publish import ArtifactRef, publish
from lmi_compile.summary import RunSummary, StagePreview, StageTime
from lmi_compile.targets import vendor_stage
from lmi_compile.workdir import new_work_folder
from lmi_runtime.artifact.folder import file_entries, group_of, parse_manifest, read_manifest, write_manifest
from lmi_runtime.artifact.limits import properties_text
from lmi_runtime.artifact.manifest import (
    MANIFEST_NAME,
    SHARED_GROUP,
    Limits,
    Manifest,
    ModelInfo,
    Profile,
    QuantizationInfo,
    TargetInfo,
    profile_folder,
)
from lmi_runtime.backends.vendor import VENDOR_TARGETS
from lmi_runtime.checksums import sha256_file
from lmi_runtime.errors import ArtifactError
from lmi_runtime.modelfolder import ModelDir, validate_model_folder
from lmi_runtime.storage import open_storage
from lmi_runtime.storage.base import ABSENT, Absent
from lmi_runtime.storage.s3 import S3Options
from lmi_runtime.tokenizer import class_to_record, load_tokenizer

Log = Callable[[str], None]


@dataclass
class RunResult:
    plan: Plan
    artifact: ArtifactRef
    manifest: Manifest
    profile: str
    stages: list[StageTime] = field(default_factory=list)
    quality: QuantReport | None = None
    seconds: float = 0.0

    def summary(self) -> RunSummary:
        ref, plan, files = self.artifact, self.plan, self.manifest.all_files()
        ppl = self.quality.perplexity if self.quality else None
        return RunSummary(
            artifact=ref.uri, manifest_sha256=ref.manifest_sha256, profile=self.profile, backend=plan.backend, tp_degree=plan.tp_degree,
            dtype=plan.dtype, quantization=self.manifest.profiles[self.profile].quantization.method, files=len(files),
            bytes=sum(f.size for f in files), files_sent=len(ref.sent), files_unchanged=len(ref.skipped),
            bytes_sent=ref.bytes_sent, quality=ppl.model_dump(mode="json") if ppl else None,
            stages=self.stages, total_seconds=round(self.seconds, 3))


@dataclass
class _Stages:
    """What the stages of one run share: the cache, the work folder and the log; records how
    long each stage took and whether the cache held it (for the run's summary)."""

    cache: StageCache
    work: Path
    log: Log
    times: list[StageTime] = field(default_factory=list)

    def timed(self, stage: str, produce: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = produce()
        self.times.append(StageTime(stage=stage, seconds=round(time.monotonic() - started, 3)))
        return result

    def cached(self, stage: str, key: str, produce: Callable[[Path], None]) -> Path:
        """The stage's output folder: from the cache, or produced now and stored there."""
        started = time.monotonic()
        path = self.cache.get(key)
        hit = path is not None
        if hit:
            self.log(f"{stage}: cached ({key[:12]})")
        else:
            self.log(f"{stage}: running")
            produce(self.work / stage)
            path = self.cache.put(key, self.work / stage, stage=stage, move=True)
        self.times.append(StageTime(stage=stage, seconds=round(time.monotonic() - started, 3), cached=hit))
        return path


def output_uri(recipe: Recipe) -> str:
    return recipe.output.uri.replace("{name}", recipe.name)


def stage_cache(recipe: Recipe) -> StageCache:
    return StageCache(Path(recipe.output.cache_dir) if recipe.output.cache_dir else None)


def fetch_key(recipe: Recipe, s3_options: S3Options | None) -> str | None:
    """The fetch stage's cache key; None for sources not cached here (see `source_identity`)."""
    identity = source_identity(recipe.source, s3_options)
    if identity is None:
        return None
    return stage_key("fetch", [], {"source": recipe.source, "identity": identity})


def run_recipe(
    recipe: Recipe,
    *,
    instance_type: str | None = None,
    token: str | None = None,
    s3_options: S3Options | None = None,
    device: str = "cpu",
    log: Log = print,
) -> RunResult:
    started = time.monotonic()
    plan = checked_plan(recipe, instance_type=instance_type, token=token, device=device)
    vendor = plan.backend in VENDOR_TARGETS
    _log_estimates(plan, log)
    work = new_work_folder()  # also removes the work folders of killed runs
    stages = _Stages(stage_cache(recipe), work, log)
    stages.times.append(StageTime(stage="plan", seconds=round(time.monotonic() - started, 3)))
    report = None
    try:
        log(f"fetch: {recipe.source.uri}")
        model = _fetch(recipe, stages, s3_options, token)
        uri = output_uri(recipe)
        model_info = ModelInfo(source=recipe.source.uri, revision=recipe.source.revision,
                               architecture=(model.config.get("architectures") or [None])[0],
                               config_digest=sha256_file(model.path / "config.json"),
                               tokenizer_class=_tokenizer_class(model.path, recipe, log))
        existing, version = _published(uri, model_info, s3_options)  # another model there: refused before any work

        if vendor:  # the vendor's build quantizes, if asked: no llm-compressor stage, no perplexity gate
            source, quantization = model.path, vendor_stage.quantization_info(recipe, plan)
        else:
            qspec, chosen = sized_for_device(recipe.quantize, device)
            if chosen and qspec.method != "none":
                log(f"quantize: sized for {device}: " + ", ".join(f"{k}={v}" for k, v in chosen.items()))

            def quantize_into(out: Path) -> None:
                from lmi_compile.stages.quantize import quantize

                quantize(model.path, qspec, out, device=device)

            source = stages.cached("quantize", stage_key("quantize", [model.path], qspec), quantize_into)
            report = QuantReport.load(source)
            _log_quality(report, log)
            quantization = _quantization(report)
        compiled = stages.cached("compile", stage_key("compile", [source], compile_settings(recipe, plan)),
                                 lambda out: compile_model(recipe, plan, source, out, log))
        target = target_info(recipe, plan, compiled)

        name = profile_name(recipe, plan)
        at_root = existing is None or (name in existing.profiles and not existing.profiles[name].folder)
        folder = "" if at_root else profile_folder(name)
        artifact = work / "artifact"
        _lay_out(compiled, artifact, folder, existing)
        profile = plan_profile(name, folder, plan, target, quantization)
        (artifact / folder / "serving.properties").write_text(properties_text(profile))
        manifest = _merged(artifact, model_info, profile, existing)
        write_manifest(artifact, manifest)
        if recipe.target.kernel_cache:
            manifest = stages.timed("kernel_cache", lambda: _kernel_cache(artifact, name, log))
        log(f"publish: {uri} (profile {name}" + (f", added to the {len(existing.profiles)} there)" if existing else ")"))
        ref = stages.timed("publish", lambda: publish(artifact, uri, s3_options=s3_options, local_only=existing is not None,
                                                      based_on=version))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return RunResult(plan=plan, artifact=ref, manifest=manifest, profile=name, stages=stages.times, quality=report,
                     seconds=time.monotonic() - started)


def _kernel_cache(artifact: Path, profile: str, log: Log) -> Manifest:
    """The compile stage's GPU half (`stages.kernel_cache`): the profile's kernel cache, built
    on this machine's GPU into the artifact before it is published; returns the new manifest."""
    from lmi_compile.stages.kernel_cache import add_kernel_cache, build_on_this_gpu

    log(f"kernel_cache: building profile {profile}'s on this GPU (lmi-serve's start, every batch bucket)")
    _, info, size = add_kernel_cache(artifact, profile, build_on_this_gpu)
    log(f"kernel_cache: built for {info.describe()} ({size / 2**20:.1f} MiB)")
    return read_manifest(artifact)


def _fetch(recipe: Recipe, stages: _Stages, s3_options: S3Options | None, token: str | None) -> ModelDir:
    """The fetched model: from the stage cache when the source is pinned and was fetched before."""
    key = fetch_key(recipe, s3_options)
    if key is None:
        stages.log("fetch: running")
        return stages.timed("fetch", lambda: fetch(recipe.source, stages.work / "model", s3_options=s3_options, token=token))
    path = stages.cached("fetch", key, lambda out: fetch(recipe.source, out, s3_options=s3_options, token=token))
    source = recipe.source
    return validate_model_folder(path, source.allow_pickle, source.trust_remote_code, source=source.uri)


def preview_stages(recipe: Recipe, plan: Plan, *, device: str = "cpu", s3_options: S3Options | None = None) -> list[StagePreview]:
    """What `run` would do now: each stage and whether the stage cache already holds its output.
    A stage whose input is not cached yet cannot be keyed, so it is shown as running."""
    cache = stage_cache(recipe)
    previews = [StagePreview(stage="plan", state="done", detail=f"{plan.backend}, TP {plan.tp_degree}, {plan.dtype}")]
    key = fetch_key(recipe, s3_options)
    model = cache.get(key) if key else None
    why = "" if key else " (not cached here: a hub model is in the Hugging Face cache, a local folder is read in place)"
    previews.append(_preview("fetch", model, key, recipe.source.uri + why))
    stages = ["compile"] if plan.backend in VENDOR_TARGETS else ["quantize", "compile"]
    upstream = model
    for stage in stages:
        settings = sized_for_device(recipe.quantize, device)[0] if stage == "quantize" else compile_settings(recipe, plan)
        key = stage_key(stage, [upstream], settings) if upstream is not None else None
        found = cache.get(key) if key else None
        previews.append(_preview(stage, found, key, recipe.quantize.method if stage == "quantize" else plan.backend))
        upstream = found
    previews.append(StagePreview(stage="publish", state="runs", detail=output_uri(recipe)))
    return previews


def _preview(stage: str, found: Path | None, key: str | None, detail: str) -> StagePreview:
    if found is None or key is None:
        return StagePreview(stage=stage, state="runs", detail=detail)
    return StagePreview(stage=stage, state="cached", key=key[:12], detail=detail)


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


def profile_name(recipe: Recipe, plan: Plan) -> str:
    """The recipe's `profile`, else backend-quantization-dtype (e.g. torch-static-int8-float32)."""
    if recipe.profile:
        return recipe.profile
    parts = [plan.backend, *([plan.quantization] if plan.quantization != "none" else []), plan.dtype]
    return "-".join(parts).replace("_", "-")


def profile_limits(plan: Plan) -> Limits:
    """The plan's limits as the profile's one record."""
    return Limits(max_batch_size=plan.max_batch_size, max_concurrent_requests=plan.max_concurrent_requests,
                  max_input_len=plan.max_input_len, max_total_len=plan.max_total_len,
                  max_num_tokens=plan.max_num_tokens, kv_cache=plan.kv_cache)


def plan_profile(name: str, folder: str, plan: Plan, target: TargetInfo, quantization: QuantizationInfo) -> Profile:
    """What the profile needs: TP × PP devices with room for weights, reserve and one full-length
    sequence. A torch profile planned for an accelerator needs that kind (its dtype and KV budget
    are the accelerator's); one planned on a CPU runs anywhere."""
    update = {"device_count": plan.tp_degree * plan.pp_degree,
              "memory_per_device": plan.kv_cache.needed_bytes(plan.max_total_len)}
    if target.hardware.kind == "any" and plan.hardware.kind != "cpu":
        update["kind"] = plan.hardware.kind
    target = target.model_copy(update={"hardware": target.hardware.model_copy(update=update)})
    return Profile(name=name, folder=folder, target=target, quantization=quantization, limits=profile_limits(plan))


def _tokenizer_class(model_dir: Path, recipe: Recipe, log: Log) -> str | None:
    """The tokenizer class AutoTokenizer chooses for the model, which the manifest records so
    that a start imports only it (`lmi_runtime.tokenizer`); None when it does not load here."""
    try:
        return class_to_record(load_tokenizer(model_dir, recipe.source.trust_remote_code))
    except Exception as err:  # the serving side then chooses through AutoTokenizer, as before
        log(f"fetch: the tokenizer does not load here ({type(err).__name__}: {err}); a start will choose its class")
        return None


def _published(uri: str, model: ModelInfo, s3_options) -> tuple[Manifest | None, str | Absent]:
    """The manifest already at the destination (None if none) and its version, which the
    publish checks is still there; refused if it is another model's."""
    found = open_storage(uri, s3_options).get_bytes(MANIFEST_NAME)
    if found is None:
        return None, ABSENT
    existing = parse_manifest(found[0], f"{uri}/{MANIFEST_NAME}")
    theirs = existing.model
    same = (theirs.config_digest == model.config_digest if theirs.config_digest
            else (theirs.source, theirs.revision) == (model.source, model.revision))
    if not same:
        raise ArtifactError(
            f"{uri} already holds an artifact of another model ({theirs.source}, config.json sha256 "
            f"{(theirs.config_digest or 'not recorded')[:12]}; this run's is {(model.config_digest or '')[:12]}): "
            "a profile can only be added to an artifact of the same model",
            hint="publish to another output.uri (or --out), or remove the artifact there first")
    return existing, found[1]


def _lay_out(compiled: Path, artifact: Path, folder: str, existing: Manifest | None) -> None:
    """The compiled output in the artifact layout. A new artifact: as compiled, at the root. An
    added profile: its rank folders and every file not already shared byte for byte (its own
    config.json after quantization, say) under its folder; shared files stay at the root."""
    shared = {e.path: e.sha256 for e in existing.files.get(SHARED_GROUP, [])} if existing else {}
    if not folder:
        shutil.copytree(compiled, artifact)
        if existing is not None:  # the root profile again: the other profiles rely on the shared files
            changed = [e.path for e in file_entries(artifact).get(SHARED_GROUP, []) if shared.get(e.path) != e.sha256]
            if changed:
                raise ArtifactError(f"profile at the artifact root would change the shared files {', '.join(changed)}",
                                    hint="give the recipe another profile name, or publish to a new location")
        return
    for entry in [e for group in file_entries(compiled).values() for e in group]:
        same = shared.get(entry.path) == entry.sha256 and group_of(entry.path) == SHARED_GROUP
        target = artifact / entry.path if same else artifact / folder / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(compiled / entry.path, target)


def _merged(artifact: Path, model: ModelInfo, profile: Profile, existing: Manifest | None) -> Manifest:
    """This run's profile and files, plus the other profiles (and their files) already published."""
    files = file_entries(artifact)
    if existing is None:
        return Manifest(model=model, profiles={profile.name: profile}, files=files)
    kept = {g: e for g, e in existing.files.items() if g != SHARED_GROUP and not profile.owns(g)}
    shared = existing.files.get(SHARED_GROUP, []) if profile.folder else files.get(SHARED_GROUP, [])
    profiles = {**{k: p for k, p in existing.profiles.items() if k != profile.name}, profile.name: profile}
    groups = {**kept, **{g: e for g, e in files.items() if g != SHARED_GROUP}, SHARED_GROUP: shared}
    return Manifest(model=model, profiles=profiles, files=groups)


def _quantization(report: QuantReport) -> QuantizationInfo:
    return QuantizationInfo(method=report.method, settings=report.settings,
                            report=report.model_dump(mode="json", exclude={"method", "settings"}))
