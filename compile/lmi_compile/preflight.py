"""`lmi-compile check`: will this artifact start and serve on that instance? Checked before a
deployment spends money: the manifest and every file's sha256 (local files hashed; on S3 the
sha256 publish recorded on each object, and the sizes), the profile chosen for the instance
(`lmi_runtime.artifact.profiles`, as lmi-serve would choose it there), its weights + activation
reserve + KV cache against a device's usable memory (the one KV-budget formula,
`lmi_runtime.engine.kv_budget`), the device count, and the limits (batch, lengths).

A remote instance's toolchain is the serving image's, unknown here: the profile's own versions
are assumed (the row says so); without --for, the installed ones are checked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from lmi_compile.plan.instances import instance_hardware
from lmi_compile.plan.modelspec import ModelSpec
from lmi_runtime.artifact.folder import read_manifest, verify_folder
from lmi_runtime.artifact.manifest import Manifest, Profile
from lmi_runtime.artifact.profiles import assess_all, preference
from lmi_runtime.engine.kv_budget import GiB, KvCachePlan, kv_cache_plan
from lmi_runtime.errors import ArtifactError
from lmi_runtime.hardware import Hardware, probe

Status = Literal["pass", "warn", "fail"]
STATUS_ORDER = {"runnable": 0, "too little memory": 1, "incompatible": 2}
DEFAULT_STEP_TOKENS = 8192  # the torch backend's prefill chunk, when a profile records no plan


@dataclass
class Check:
    check: str
    status: Status
    detail: str


@dataclass
class Report:
    artifact: str
    hardware: str
    profile: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def add(self, check: str, ok: bool | None, detail: str) -> None:
        self.checks.append(Check(check, "pass" if ok else ("warn" if ok is None else "fail"), detail))

    def to_json(self) -> str:
        return json.dumps({"artifact": self.artifact, "hardware": self.hardware, "profile": self.profile,
                           "passed": self.passed, "checks": [asdict(c) for c in self.checks]}, indent=2)


def preflight(artifact: str, instance_type: str | None = None, profile: str | None = None,
              s3_options=None) -> Report:
    hardware = instance_hardware(instance_type) if instance_type else probe()
    report = Report(artifact, hardware.describe())
    manifest, config = _verified(artifact, report, s3_options)
    if manifest is None:
        return report
    chosen = _choose(manifest, hardware, profile, remote=instance_type is not None, report=report)
    if chosen is None:
        return report
    report.profile = chosen.name
    kv = _kv_here(chosen, manifest, config, hardware)
    _memory(report, chosen, kv)
    _limits(report, chosen, kv, config)
    return report


def _verified(artifact: str, report: Report, s3_options) -> tuple[Manifest | None, dict]:
    try:
        if artifact.startswith("s3://"):
            manifest, config = _verified_s3(artifact, s3_options)
            how = "sizes and the sha256 recorded on each object match the manifest"
        else:
            root = Path(artifact).expanduser().resolve()
            manifest = read_manifest(root)
            verify_folder(root, manifest)
            config = json.loads((root / "config.json").read_text()) if (root / "config.json").is_file() else {}
            how = "every file's sha256 matches the manifest, nothing extra"
    except ArtifactError as err:
        report.add("manifest and checksums", False, err.message)
        return None, {}
    report.add("manifest and checksums", True, f"{len(manifest.all_files())} files, {len(manifest.profiles)} "
                                                 f"profile(s); {how}")
    return manifest, config


def _verified_s3(uri: str, s3_options) -> tuple[Manifest, dict]:
    from lmi_runtime.artifact.download import fetch_manifest
    from lmi_runtime.storage import open_storage

    manifest, _ = fetch_manifest(uri, s3_options)
    storage = open_storage(uri, s3_options)
    listing = storage.list()
    entries = manifest.all_files()
    digests = storage.stored_digests([e.path for e in entries if e.path in listing])
    missing = [e.path for e in entries if e.path not in listing]
    resized = [e.path for e in entries if e.path in listing and listing[e.path].size != e.size]
    altered = [e.path for e in entries if e.path in listing and digests.get(e.path) != e.sha256]
    problems = [f"{what}: {', '.join(paths)}" for paths, what in
                ((missing, "missing"), (resized, "wrong size"), (altered, "sha256 differs or unrecorded")) if paths]
    if problems:
        raise ArtifactError(f"{uri} does not match its manifest — " + "; ".join(problems))
    found = storage.get_bytes("config.json")
    return manifest, json.loads(found[0]) if found else {}


def _choose(manifest: Manifest, hardware: Hardware, pinned: str | None, remote: bool, report: Report) -> Profile | None:
    """As lmi-serve would choose on that hardware; a profile that is compatible but short of
    memory is still checked below, so the numbers are shown."""
    if remote:  # the serving image's versions are not known here: assume each profile's own
        found = [a for p in manifest.profiles.values()
                 for a in assess_all(manifest.only(p.name), hardware, dict(p.target.toolchain))]
    else:
        found = assess_all(manifest, hardware)
    found.sort(key=lambda a: (STATUS_ORDER[a.status], preference(a.profile, hardware)))
    if pinned:
        found = [a for a in found if a.profile.name == pinned]
        if not found:
            report.add("profile", False, f"no profile {pinned!r} (the artifact has {', '.join(manifest.profiles)})")
            return None
    usable = [a for a in found if a.status != "incompatible"]
    if not usable:
        report.add("profile", False, "no profile is compatible: " + "; ".join(a.line() for a in found))
        return None
    best = usable[0]
    toolchain = " (toolchain: the profile's own assumed for the serving image)" if remote else ""
    others = "".join(f"; {a.profile.name}: {a.status}" for a in found if a is not best)
    report.add("profile", True, f"{best.profile.name} ({best.profile.describe()}){toolchain}{others}")
    return best.profile


def _kv_here(profile: Profile, manifest: Manifest, config: dict, hardware: Hardware) -> KvCachePlan | None:
    """The profile's planned figures on this hardware's memory; without a plan (format 1), from
    config.json and the profile's weight files."""
    planned, total = profile.limits.kv_cache, profile.limits.max_total_len
    tp, pp = profile.target.tp_degree, profile.target.pp_degree
    if planned is not None:
        return kv_cache_plan(memory_per_device=hardware.memory_per_unit, utilization=planned.utilization,
                             weights_per_device=planned.weights_per_device, reserve=planned.activation_reserve,
                             bytes_per_token=planned.bytes_per_token, kv_heads_per_device=planned.kv_heads_per_device,
                             max_total_len=total or 1)
    if not config:
        return None
    from lmi_compile.plan.memory import kv_cache_plan as plan_kv

    spec = ModelSpec.from_config(config)
    dtype = profile.target.dtype if profile.target.dtype != "auto" else ("float32" if hardware.kind == "cpu" else "float16")
    weights = sum(e.size for e in manifest.only(profile.name).group_for_rank(0) if e.path.endswith(".safetensors"))
    return plan_kv(spec, hardware, weight_bytes=weights * tp * pp, dtype=dtype, tp=tp, pp=pp, utilization=0.9,
                   max_num_tokens=DEFAULT_STEP_TOKENS, max_batch_size=profile.limits.max_batch_size or 256,
                   max_total_len=total or spec.max_position_embeddings or 2048)


def _memory(report: Report, profile: Profile, kv: KvCachePlan | None) -> None:
    devices = profile.target.tp_degree * profile.target.pp_degree
    if kv is None:
        report.add("memory per device", None, "no planned figures and no config.json: not checked")
        return
    total = profile.limits.max_total_len or 0
    need = kv.needed_bytes(total)
    report.add("memory per device", need <= kv.usable_bytes,
               f"weights {kv.weights_per_device / GiB:.2f} GiB + activation reserve {kv.activation_reserve / GiB:.2f} GiB"
               f" + KV cache of one {total:,}-token sequence {total * kv.bytes_per_token / GiB:.2f} GiB = "
               f"{need / GiB:.2f} GiB {'≤' if need <= kv.usable_bytes else '>'} usable {kv.usable_bytes / GiB:.2f} GiB "
               f"({kv.memory_per_device / GiB:.1f} GiB × {kv.utilization}) on each of {devices} device(s)")
    report.add("KV cache", kv.tokens >= total,
               f"{kv.tokens:,} tokens ({max(kv.bytes_per_device, 0) / GiB:.2f} GiB per device, "
               f"{kv.bytes_per_token:,} bytes per token)")


def _limits(report: Report, profile: Profile, kv: KvCachePlan | None, config: dict) -> None:
    limits = profile.limits
    positions = config.get("max_position_embeddings")
    total, given_in = limits.max_total_len, limits.max_input_len
    if total is not None:
        ok = (given_in is None or given_in < total) and (not isinstance(positions, int) or total <= positions)
        report.add("lengths", ok, f"max_input_len {given_in} < max_total_len {total} ≤ the model's "
                                  f"max_position_embeddings {positions}")
    batch = limits.max_batch_size
    if kv is not None and batch and total:
        fits = kv.tokens // total
        static = profile.target.backend == "neuron"  # KV for batch × n_positions, allocated up front
        ok = True if fits >= batch else (False if static else None)
        note = "" if fits >= batch else (" (Neuron allocates them up front)" if static else
                                         " (paged: shorter sequences share the cache; full-length ones wait)")
        report.add("batch", ok, f"{fits:,} sequences of {total:,} tokens fit at once for max_batch_size {batch}{note}")
    if limits.max_concurrent_requests is not None and batch:
        report.add("queue", limits.max_concurrent_requests >= batch,
                   f"max_concurrent_requests {limits.max_concurrent_requests} ≥ max_batch_size {batch}")


__all__ = ["Check", "Report", "preflight"]
