"""The quantize stage: model folder + QuantizeSpec -> quantized model folder + report.

Everything is written into a temporary sibling of `out_dir` and renamed into place only after
the quality gate passes, so a failed or rejected run leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lmi_runtime.errors import ConfigError, ModelFolderError, QualityGateError
from lmi_runtime.progress import Progress, Task, progress
from lmi_compile.quantize import corpora, defaults, evaluate, groups, methods
from lmi_compile.quantize.library import quiet, versions
from lmi_compile.quantize.report import Perplexity, QuantReport, TextUse, peak_memory
from lmi_compile.recipe import EIGHT_BIT_METHODS, QuantizeSpec

FORMATS = {
    "awq": "compressed-tensors pack-quantized",
    "gptq": "compressed-tensors pack-quantized",
    "smoothquant": "compressed-tensors int-quantized",
    "static_int8": "compressed-tensors pack-quantized",
    "fp8": "compressed-tensors float-quantized",
    "none": "unchanged",
}


@dataclass(frozen=True)
class QuantResult:
    model_dir: Path
    report: QuantReport


def quantize(
    model_dir: Path,
    spec: QuantizeSpec,
    out_dir: Path,
    device: str = "cpu",
    show_progress: bool = True,
) -> QuantResult:
    """Quantize the Hugging Face folder `model_dir` into `out_dir` (which must not hold files).
    Sizes the recipe left unset are chosen for `device` (see `defaults`)."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_inputs(model_dir, out_dir, device)
    spec, _ = defaults.resolve(spec, device)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        with progress(show_progress) as shown, quiet():
            if spec.method == "none":
                report = _copy_through(model_dir, tmp, device)
            else:
                report = _quantize(model_dir, spec, tmp, device, shown)
        report.save(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # checked empty above
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return QuantResult(out_dir, report)


def resolve_settings(spec: QuantizeSpec, widths: dict[str, int]) -> tuple[methods.Settings, str | None]:
    """Turn the user's spec into concrete settings (bits checked, group size resolved)."""
    method = spec.method
    if method in EIGHT_BIT_METHODS:
        if "bits" in spec.model_fields_set and spec.bits != 8:
            raise ConfigError(f"{method} quantizes to 8 bits, not {spec.bits}", hint="drop bits or set bits: 8")
        bits, group, note = 8, None, None
    else:
        if spec.bits not in (4, 8):
            raise ConfigError(f"{method} supports 4 or 8 bit weights, not {spec.bits}")
        bits = spec.bits
        group = groups.resolve_group_size(spec.group_size, widths)
        note = (
            f"auto: {group} is the largest power-of-two group size <= {groups.MAX_AUTO_GROUP} that divides "
            f"every quantized layer width ({', '.join(map(str, sorted(set(widths.values()))))})"
            if spec.group_size == "auto"
            else None
        )
    settings = methods.Settings(
        method=method,
        bits=bits,
        group_size=group,
        symmetric=spec.symmetric if method in groups.GROUPED else True,
        desc_act=spec.desc_act,
        damp=spec.damp,
        alpha=spec.alpha,
        awq_grid=spec.awq_grid,
        awq_duo_scaling=spec.awq_duo_scaling,
        activation_bits=8 if method in ("smoothquant", "fp8") else 16,
        type="float" if method == "fp8" else "int",
    )
    return settings, note


def _quantize(model_dir: Path, spec: QuantizeSpec, tmp: Path, device: str, shown: Progress) -> QuantReport:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _load(model_dir, device, AutoModelForCausalLM, torch)
    settings, note = resolve_settings(spec, groups.quantized_widths(model))

    cal, qual = spec.calibration, spec.quality
    texts = corpora.calibration_and_evaluation(cal.dataset, qual.dataset)
    samples = None
    if settings.method in methods.CALIBRATED:
        samples = corpora.calibration_samples(tokenizer, texts.calibration, cal.num_samples, cal.seq_len)
    windows = evaluate.eval_windows(corpora.token_stream(tokenizer, texts.evaluation), qual.seq_len, qual.max_tokens)

    eval_start = time.perf_counter()
    original = _perplexity(model, windows, device, shown, "perplexity, original", qual.batch_size)
    eval_time = time.perf_counter() - eval_start

    if device.startswith("cuda"):
        model.to("cpu")  # llm-compressor onloads one layer at a time to the accelerator
        torch.cuda.reset_peak_memory_stats()
    layers = _LayerProgress(shown, f"quantize {settings.method}")
    start = time.perf_counter()
    with quiet(on_step=layers.step):  # inside the stage's quiet(): adds the listener
        methods.apply(model, settings, samples, tokenizer)
    wall = time.perf_counter() - start
    layers.task.done()
    memory = peak_memory(device)

    save = shown.task("save")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save.done()
    del model

    # Score what was written, as a user will load it, not the in-memory model.
    eval_start = time.perf_counter()
    reloaded = _load(tmp, device, AutoModelForCausalLM, torch)
    quantized = _perplexity(reloaded, windows, device, shown, "perplexity, quantized", qual.batch_size)
    eval_time += time.perf_counter() - eval_start

    increase = (quantized - original) / original
    limit = qual.max_ppl_increase
    if limit is not None and increase > limit:
        raise QualityGateError(
            f"{settings.method} raised perplexity from {original:.3f} to {quantized:.3f} "
            f"(+{increase:.2%}), above the allowed +{limit:.2%}",
            hint="raise quality.max_ppl_increase, or use more calibration samples, a smaller group "
            "size or 8-bit weights",
        )
    return QuantReport(
        method=settings.method,
        settings={k: v for k, v in asdict(settings).items() if k != "method"},
        group_size_note=note,
        format=FORMATS[settings.method],
        calibration=TextUse.of(texts.calibration, samples, cal.seq_len) if samples else None,
        evaluation=TextUse.of(texts.evaluation, windows, qual.seq_len),
        perplexity=Perplexity(
            original=original,
            quantized=quantized,
            relative_increase=increase,
            max_relative_increase=limit,
            passed=limit is None or increase <= limit,
        ),
        wall_time_s=round(wall, 2),
        evaluation_time_s=round(eval_time, 2),
        memory=memory,
        versions=versions(),
        device=device,
    )


def _copy_through(model_dir: Path, tmp: Path, device: str) -> QuantReport:
    start = time.perf_counter()
    shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
    return QuantReport(
        method="none",
        settings={},
        format=FORMATS["none"],
        wall_time_s=round(time.perf_counter() - start, 2),
        memory=peak_memory("cpu"),
        versions=versions(),
        device=device,
    )


def _load(folder: Path, device: str, auto_cls, torch):
    # float32 on CPU: half-precision matmuls there are slow or missing; the checkpoint's own
    # dtype on a GPU.
    dtype = torch.float32 if device == "cpu" else "auto"
    model = auto_cls.from_pretrained(folder, dtype=dtype)
    return model.to(device).eval()


def _perplexity(model, windows, device: str, shown: Progress, label: str, batch_size: int) -> float:
    task = shown.task(f"{label} (windows)", total=len(windows))
    return evaluate.perplexity(model, windows, device, batch_size, on_windows=task.advance)


class _LayerProgress:
    """llm-compressor's own bars, as one task: decoder layers (its sequential subgraphs) done of
    all, with the current layer's calibration samples (or AWQ grid search) as the note."""

    SUBGRAPH = re.compile(r"\((\d+)/(\d+)\): (\w+)")

    def __init__(self, shown: Progress, label: str):
        self.task: Task = shown.task(label, total=None)
        self.layer = ""

    def step(self, desc: str, done: int, total: int | None) -> None:
        found = self.SUBGRAPH.match(desc)
        if found:
            index, count, what = int(found[1]), int(found[2]), found[3].lower()
            self.layer = f"layer {index}/{count}"
            self.task.update(completed=index - 1, total=count, note=f"{self.layer}: {what} sample {done}/{total}")
        elif desc:
            self.task.update(note=f"{self.layer}: {desc} {done}/{total or '?'}".lstrip(": "))


def _check_inputs(model_dir: Path, out_dir: Path, device: str) -> None:
    if not (model_dir / "config.json").is_file():
        raise ModelFolderError(
            f"{model_dir} is not a Hugging Face model folder (no config.json)",
            hint="give the folder that `lmi-compile fetch` produced",
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"the output folder {out_dir} already exists and is not empty", hint="choose a new folder")
    if out_dir.resolve() == model_dir.resolve():
        raise ConfigError("the output folder must differ from the model folder")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device '{device}'", hint="use cpu or cuda")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for, but no CUDA GPU is visible", hint="use --device cpu")
