"""`lmi-compile quantize`: run the quantize stage alone on a model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from lmi_runtime.errors import ConfigError
from lmi_compile.commands.common import DeviceOption, printed_warnings
from lmi_compile.recipe import QuantizeSpec, Recipe
from lmi_compile.recipe_loader import read_recipe_file, section_from_dict


def load_spec(recipe: Path | None, overrides: dict[str, Any]) -> QuantizeSpec:
    """A QuantizeSpec from a recipe file (its `quantize:` section, or a bare quantize section)
    with command-line values on top; a dotted key (`calibration.num_samples`) sets a subsection."""
    data: dict[str, Any] = {}
    where = "quantize settings"
    if recipe is not None:
        loaded = read_recipe_file(recipe)
        is_full_recipe = bool(set(loaded) & set(Recipe.model_fields))
        data = dict(loaded.get("quantize") or {}) if is_full_recipe else loaded
        where = f"quantize settings in {recipe.name}"
    for key, value in overrides.items():
        if value is None:
            continue
        *sections, leaf = key.split(".")
        target = data
        for section in sections:
            target = target.setdefault(section, {})
        target[leaf] = value
    return section_from_dict(QuantizeSpec, data, where)


def _group_size(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError as err:
        raise ConfigError(f"--group-size must be a number or 'auto', got '{value}'") from err


def quantize_command(
    model_dir: Path = typer.Argument(..., help="Hugging Face model folder to quantize."),
    out: Path = typer.Option(..., "--out", help="New folder for the quantized model and its report."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe YAML (its quantize: section)."),
    method: Optional[str] = typer.Option(None, help="awq | gptq | smoothquant | static_int8 | fp8 | none"),
    bits: Optional[int] = typer.Option(None, help="Weight bits (4 or 8 for awq/gptq)."),
    group_size: Optional[str] = typer.Option(None, "--group-size", help="Columns per scale, or 'auto'."),
    symmetric: Optional[bool] = typer.Option(None, "--symmetric/--asymmetric", help="Zero point or not."),
    desc_act: Optional[bool] = typer.Option(None, "--desc-act/--no-desc-act", help="GPTQ act-order."),
    damp: Optional[float] = typer.Option(None, help="GPTQ dampening fraction."),
    alpha: Optional[float] = typer.Option(None, help="SmoothQuant migration strength (0..1)."),
    dataset: Optional[str] = typer.Option(None, help="Calibration text: builtin:NAME, a .txt/.jsonl file, hf:NAME."),
    samples: Optional[int] = typer.Option(None, help="Calibration samples."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per calibration sample."),
    eval_tokens: Optional[int] = typer.Option(None, "--eval-tokens", help="Held-out tokens for perplexity."),
    max_ppl_increase: Optional[float] = typer.Option(
        None, "--max-ppl-increase", help="Fail if perplexity rises by more than this fraction (0.05 = +5%)."
    ),
    device: DeviceOption = "cpu",
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pickle .bin weights when no safetensors exist (they can run code)."),
) -> None:
    """Quantize a model folder (AWQ, GPTQ, SmoothQuant W8A8, int8 weight-only, fp8) and check its perplexity."""
    with printed_warnings():
        spec = load_spec(recipe, {
            "method": method,
            "bits": bits,
            "group_size": _group_size(group_size),
            "symmetric": symmetric,
            "desc_act": desc_act,
            "damp": damp,
            "alpha": alpha,
            "calibration.dataset": dataset,
            "calibration.num_samples": samples,
            "calibration.seq_len": seq_len,
            "quality.max_tokens": eval_tokens,
            "quality.max_ppl_increase": max_ppl_increase,
        })
    from lmi_compile.quantize import REPORT_NAME, quantize
    from lmi_runtime.modelfolder import validate_model_folder

    validate_model_folder(model_dir, allow_pickle=allow_pickle)  # the same rules as fetch: no pickle unless allowed
    result = quantize(model_dir, spec, out, device=device)
    _print_summary(result.report, result.model_dir / REPORT_NAME)


def _print_summary(report, report_path: Path) -> None:
    table = Table(title=f"quantized with {report.method}", show_header=False)
    table.add_row("settings", ", ".join(f"{k}={v}" for k, v in report.settings.items()))
    if report.group_size_note:
        table.add_row("group size", report.group_size_note)
    if report.calibration:
        c = report.calibration
        table.add_row("calibration", f"{c.samples} x {c.seq_len} tokens of {c.source}")
    if report.perplexity:
        p = report.perplexity
        table.add_row("perplexity", f"{p.original:.3f} -> {p.quantized:.3f} ({p.relative_increase:+.2%})")
    table.add_row("wall time", f"{report.wall_time_s:.1f} s (+{report.evaluation_time_s:.1f} s evaluation)")
    console = Console()
    console.print(table)
    console.print(f"report: {report_path}", soft_wrap=True, highlight=False)
