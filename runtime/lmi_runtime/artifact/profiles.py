"""Which of an artifact's profiles can run on a machine, and which one to serve.

Each profile is assessed against the machine's hardware and installed toolchain:
- incompatible: its backend, hardware kind, GPU arch / NeuronCore version, toolchain (the
  policies of `artifact.toolchain`) or device count rule it out, with the reason;
- too little memory: compatible, but weights + activation reserve + one full-length sequence's
  KV cache (the profile's planned figures) exceed a device's usable memory; with what would fit;
- runnable.
The best runnable profile wins: preferred backend for the machine (a compiled engine on its
own accelerator before portable torch weights), then lower precision (fewer weight bits, then a
smaller dtype: more room for the KV cache; float32 first on a CPU, where half precision is slow),
then more planned KV-cache tokens. `LMI_PROFILE`
(`--profile`) pins one; a pin that cannot run here is refused with its reason.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

from lmi_runtime.artifact.manifest import Manifest, Profile
from lmi_runtime.artifact.toolchain import DISTRIBUTIONS, check_target, installed_versions
from lmi_runtime.engine.kv_budget import GiB
from lmi_runtime.errors import ArtifactError
from lmi_runtime.hardware import Hardware

log = logging.getLogger("lmi_runtime.profiles")
Status = Literal["runnable", "too little memory", "incompatible"]
PROFILE_ENV = "LMI_PROFILE"
SERVABLE = {"cpu": ("torch",), "cuda": ("trtllm", "torch"), "neuron": ("neuron",)}  # preferred first
DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "auto": 16}


@dataclass
class Assessment:
    profile: Profile
    status: Status
    reason: str

    def line(self) -> str:
        return f"{self.profile.name} ({self.profile.describe()}): {self.reason}"


def assess(profile: Profile, hardware: Hardware, running: dict[str, str]) -> Assessment:
    target, wanted = profile.target, profile.target.hardware
    try:
        check_target(target, hardware, running, profile.quantization.method)
    except ArtifactError as err:
        return Assessment(profile, "incompatible", err.message)
    if target.backend not in SERVABLE[hardware.kind]:
        return Assessment(profile, "incompatible", f"a {target.backend} profile does not run on {hardware.kind} "
                                                   f"({hardware.describe()})")
    devices = max(wanted.device_count, target.tp_degree * target.pp_degree) if hardware.kind != "cpu" else 1
    if devices > hardware.parallel_units:
        return Assessment(profile, "incompatible", f"needs {devices} devices (TP {target.tp_degree} × PP "
                                                   f"{target.pp_degree}); {hardware.describe()} has {hardware.parallel_units}")
    need, usable = memory_need(profile), _usable(profile, hardware)
    if need is None:
        return Assessment(profile, "runnable", f"compatible with {hardware.describe()} (no planned memory figure to check)")
    if need > usable:
        return Assessment(profile, "too little memory", f"needs {need / GiB:.2f} GiB per device, {hardware.describe()} "
                                                        f"offers {usable / GiB:.2f} GiB; {what_fits(profile, hardware)}")
    return Assessment(profile, "runnable", f"compatible with {hardware.describe()}; needs {need / GiB:.2f} GiB of "
                                           f"{usable / GiB:.2f} GiB per device")


def memory_need(profile: Profile) -> int | None:
    """Weights + activation reserve + one full-length sequence's KV cache, per device (planned)."""
    kv, total = profile.limits.kv_cache, profile.limits.max_total_len
    if profile.target.hardware.memory_per_device is not None:
        return profile.target.hardware.memory_per_device
    return kv.needed_bytes(total) if kv is not None and total else None


def _usable(profile: Profile, hardware: Hardware) -> int:
    kv = profile.limits.kv_cache
    return int(hardware.memory_per_unit * (kv.utilization if kv is not None else 0.9))


def what_fits(profile: Profile, hardware: Hardware) -> str:
    """The ways out: a shorter max_total_len, or devices with enough memory (lmi-compile check
    --for INSTANCE tries a named instance type)."""
    kv, need = profile.limits.kv_cache, memory_need(profile) or 0
    utilization = kv.utilization if kv is not None else 0.9
    ways = []
    if kv is not None:
        room = _usable(profile, hardware) - kv.weights_per_device - kv.activation_reserve
        if room >= kv.bytes_per_token * 16:
            ways.append(f"max_total_len ≤ {room // kv.bytes_per_token:,} tokens (now {profile.limits.max_total_len:,})")
    ways.append(f"a device with at least {need / utilization / GiB:.1f} GiB (at utilization {utilization})")
    return "would fit with " + " or ".join(ways)


def preference(profile: Profile, hardware: Hardware) -> tuple:
    order = SERVABLE[hardware.kind]
    backend = order.index(profile.target.backend) if profile.target.backend in order else len(order)
    bits = profile.quantization.settings.get("bits") if profile.quantization.method != "none" else None
    weight_bits = bits if isinstance(bits, int) else (8 if profile.quantization.method != "none" else 99)
    dtype_bits = DTYPE_BITS.get(profile.target.dtype, 16)
    if hardware.kind == "cpu":  # half-precision matmuls are slow or missing on CPUs: float32 first there
        dtype_bits = 0 if profile.target.dtype == "float32" else dtype_bits
    kv = profile.limits.kv_cache
    return backend, weight_bits, dtype_bits, -(kv.tokens if kv else 0), profile.name


def assess_all(manifest: Manifest, hardware: Hardware, running: dict[str, str] | None = None) -> list[Assessment]:
    if running is None:
        names = {n for p in manifest.profiles.values() for n in p.target.toolchain} | set(DISTRIBUTIONS)
        running = installed_versions(names)
    found = [assess(p, hardware, running) for p in manifest.profiles.values()]
    return sorted(found, key=lambda a: preference(a.profile, hardware))


def choose(manifest: Manifest, hardware: Hardware, pinned: str | None = None,
           running: dict[str, str] | None = None) -> tuple[Profile, str]:
    """The profile to serve and why; ArtifactError when none (or the pinned one) cannot run here."""
    found = assess_all(manifest, hardware, running)
    if pinned:
        match = [a for a in found if a.profile.name == pinned]
        if not match:
            raise ArtifactError(f"{PROFILE_ENV}={pinned}: this artifact has no such profile "
                                f"(it has {', '.join(manifest.profiles)})", hint="pick one of those names")
        if match[0].status != "runnable":
            raise ArtifactError(f"profile {pinned!r} was pinned ({PROFILE_ENV} / --profile) but cannot run here: "
                                f"{match[0].status}: {match[0].reason}",
                                hint="unset the pin to pick automatically, or pin a runnable profile "
                                     "(lmi-serve --list-profiles ARTIFACT)")
        return match[0].profile, f"pinned by {PROFILE_ENV} / --profile; {match[0].reason}"
    runnable = [a for a in found if a.status == "runnable"]
    if not runnable:
        raise ArtifactError("no profile of this artifact runs on this machine: "
                            + "; ".join(f"{a.profile.name}: {a.reason}" for a in found),
                            hint="add a profile for this hardware (lmi-compile run with a recipe for it), "
                                 "or serve it where a profile fits")
    best = runnable[0]
    others = [a for a in found if a is not best]
    why = best.reason if len(found) == 1 else (
        f"{best.reason}; preferred: backend {best.profile.target.backend} for {hardware.kind}, then "
        + ("float32 on a CPU" if hardware.kind == "cpu" else "lower precision")
        + "".join(f"; not {a.profile.name}: {a.status if a.status != 'runnable' else 'ranked lower'}" for a in others))
    return best.profile, why


def pinned_profile(env: dict[str, str] | None = None) -> str | None:
    value = (os.environ if env is None else env).get(PROFILE_ENV, "").strip()
    return value or None


def grouped_report(manifest: Manifest, hardware: Hardware, running: dict[str, str] | None = None) -> str:
    """`lmi-serve --list-profiles`: runnable here / compatible but too little memory / incompatible."""
    found = assess_all(manifest, hardware, running)
    lines = [f"this machine: {hardware.describe()}"]
    for status, title in (("runnable", "runnable here"), ("too little memory", "compatible but too little memory"),
                          ("incompatible", "incompatible")):
        lines.append(f"{title}:")
        group = [a for a in found if a.status == status]
        lines += [f"  {a.line()}" for a in group] or ["  (none)"]
    return "\n".join(lines)
