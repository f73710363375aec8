"""Each method runs once per test session on the real SmolLM2, with small calibration and
evaluation so the whole area stays within a few minutes on 2 CPU cores."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from lmi_compile.recipe import QuantizeSpec

SMALL = dict(
    calibration={"num_samples": 8, "seq_len": 128},
    quality={"max_tokens": 2048, "seq_len": 256},
)
# With only ~1k calibration tokens GPTQ/AWQ need the zero point (asymmetric) and, for GPTQ, a
# stronger dampening to beat plain rounding; symmetric GPTQ with damp 0.01 measured +64% here.
METHOD_SETTINGS = {
    "awq": dict(method="awq", group_size="auto", symmetric=False, awq_grid=3, calibration={"num_samples": 4, "seq_len": 128}),
    "gptq": dict(method="gptq", group_size=64, symmetric=False, damp=0.1),
    "smoothquant": dict(method="smoothquant"),  # alpha 0.8 (the default)
    "static_int8": dict(method="static_int8"),
}


def _small_spec(**settings) -> QuantizeSpec:
    return QuantizeSpec.model_validate({**SMALL, **settings})


@pytest.fixture()
def small_spec():
    """`small_spec(method=..., ...)` -> a QuantizeSpec with the tests' small calibration/eval."""
    return _small_spec


@pytest.fixture(scope="session")
def quantized(smollm2_dir: Path, tmp_path_factory):
    """`quantized(method)` -> (QuantResult, the progress it printed), computed on first use and
    shared by every test. Progress goes to a non-terminal stream: the plain lines a log gets."""
    from lmi_compile.quantize import quantize

    done: dict = {}
    root = tmp_path_factory.mktemp("quantized")

    def get(method: str):
        if method not in done:
            spec = _small_spec(**METHOD_SETTINGS[method])
            with contextlib.redirect_stderr(io.StringIO()) as printed:
                result = quantize(smollm2_dir, spec, root / method, show_progress=True)
            done[method] = result, printed.getvalue()
        return done[method]

    return get
