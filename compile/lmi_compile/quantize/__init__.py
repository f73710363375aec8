"""The quantize stage: AWQ, GPTQ, SmoothQuant (W8A8), int8 weight-only and fp8 (W8A8), with
calibration text, a perplexity quality gate and a report. llm-compressor is imported only when a
method runs, and torch only when the stage is used (the planner reads `defaults` without it)."""

from lmi_compile.quantize.report import REPORT_NAME, QuantReport

__all__ = ["REPORT_NAME", "QuantReport", "QuantResult", "quantize"]


def __getattr__(name: str):
    if name in ("QuantResult", "quantize"):
        from lmi_compile.stages import quantize as stage

        return getattr(stage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
