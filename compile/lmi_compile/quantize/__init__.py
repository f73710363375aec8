"""The quantize stage: AWQ, GPTQ, SmoothQuant (W8A8) and int8 weight-only, with calibration
text, a perplexity quality gate and a report. llm-compressor is imported only when a method runs."""

from lmi_compile.quantize.report import REPORT_NAME, QuantReport
from lmi_compile.quantize.stage import QuantResult, quantize

__all__ = ["REPORT_NAME", "QuantReport", "QuantResult", "quantize"]
