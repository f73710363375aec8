"""The quantization methods, each an llm-compressor recipe run by `oneshot`.

| method      | weights                     | activations              | calibration |
|-------------|-----------------------------|--------------------------|-------------|
| awq         | int4/int8, groups, AWQ scales | 16-bit                 | yes         |
| gptq        | int4/int8, groups, GPTQ     | 16-bit                   | yes         |
| smoothquant | int8 per channel            | int8 per token, dynamic  | yes         |
| static_int8 | int8 per channel            | 16-bit                   | no          |
| fp8         | fp8 (e4m3) per channel      | fp8 per token, dynamic   | no          |
| rtn         | round-to-nearest baseline for the benchmark (no calibration)          |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lmi_runtime.errors import ConfigError
from lmi_compile.quantize.groups import IGNORED
from lmi_compile.quantize.library import cpu_safe, llmcompressor

CALIBRATED = {"awq", "gptq", "smoothquant"}


@dataclass(frozen=True)
class Settings:
    """Everything a method needs, resolved (no `auto` left). Also what the report records."""

    method: str
    bits: int
    group_size: int | None  # None: one scale per output channel
    symmetric: bool
    desc_act: bool = False
    damp: float = 0.01
    alpha: float = 0.8
    awq_grid: int = 20
    awq_duo_scaling: bool | str = True
    activation_bits: int = 16  # 8: per-token dynamic activations of `type` (W8A8)
    type: Literal["int", "float"] = "int"  # "float": float8_e4m3fn weights and activations (fp8)


def _scheme(settings: Settings, lc):
    weights = lc.QuantizationArgs(
        num_bits=settings.bits,
        type=settings.type,
        symmetric=settings.symmetric,
        strategy="group" if settings.group_size else "channel",
        group_size=settings.group_size,
    )
    activations = None
    if settings.activation_bits == 8:
        activations = lc.QuantizationArgs(num_bits=8, type=settings.type, symmetric=True, strategy="token", dynamic=True)
    return lc.QuantizationScheme(targets=["Linear"], weights=weights, input_activations=activations)


def recipe(settings: Settings) -> list:
    """llm-compressor modifiers for `settings`; the output head is never quantized."""
    lc = llmcompressor()
    groups = {"group_0": _scheme(settings, lc)}
    ignore = list(IGNORED)
    match settings.method:
        case "gptq":
            return [
                lc.GPTQModifier(
                    config_groups=groups,
                    ignore=ignore,
                    dampening_frac=settings.damp,
                    # desc_act in AutoGPTQ's sense: columns in activation order, g_idx stored.
                    actorder="group" if settings.desc_act else None,
                )
            ]
        case "awq":
            return [
                lc.AWQModifier(n_grid=settings.awq_grid, duo_scaling=settings.awq_duo_scaling),
                lc.QuantizationModifier(config_groups=groups, ignore=ignore),
            ]
        case "smoothquant":
            return [
                lc.SmoothQuantModifier(smoothing_strength=settings.alpha),
                lc.QuantizationModifier(config_groups=groups, ignore=ignore),
            ]
        case "static_int8" | "fp8" | "rtn":
            return [lc.QuantizationModifier(config_groups=groups, ignore=ignore)]
    raise ConfigError(f"unknown quantization method '{settings.method}'")


def apply(
    model: torch.nn.Module,
    settings: Settings,
    samples: list[list[int]] | None,
    tokenizer=None,
) -> None:
    """Quantize `model` in place (weights stay fake-quantized until `save_pretrained`
    writes compressed-tensors). `samples` are already tokenized, but llm-compressor insists on
    a tokenizer whenever data is given. Progress comes from llm-compressor's own bars
    (see `library.quiet`)."""
    lc = llmcompressor()
    kwargs: dict = {}
    if settings.method in CALIBRATED:
        if not samples:
            raise ConfigError(f"{settings.method} needs calibration samples")
        from datasets import Dataset

        kwargs = dict(
            dataset=Dataset.from_dict(
                {"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]}
            ),
            num_calibration_samples=len(samples),
            max_seq_length=max(len(s) for s in samples),
            shuffle_calibration_samples=False,
            processor=tokenizer,
        )
    with cpu_safe():
        lc.oneshot(model=model, recipe=recipe(settings), **kwargs)

