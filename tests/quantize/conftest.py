"""Each method runs once per test session on the real SmolLM2, with small calibration and
evaluation so the whole area stays within a few minutes on 2 CPU cores."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest

from lmi_compile.quantize import REPORT_NAME
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
    # in the default suite: a quarter of the evaluation, and the stage's own gate
    "fp8": dict(method="fp8", quality={"max_tokens": 512, "seq_len": 256, "max_ppl_increase": 0.05}),
}


def _small_spec(**settings) -> QuantizeSpec:
    return QuantizeSpec.model_validate({**SMALL, **settings})


@pytest.fixture()
def small_spec():
    """`small_spec(method=..., ...)` -> a QuantizeSpec with the tests' small calibration/eval."""
    return _small_spec


@pytest.fixture()
def method_spec():
    """`method_spec(method)` -> the QuantizeSpec the `quantized*` fixtures run `method` with."""
    return lambda method: _small_spec(**METHOD_SETTINGS[method])


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


@pytest.fixture(scope="session")
def quantized_folder(quantized):
    """`quantized_folder(method)` -> the method's output folder, kept in the test cache across
    runs (keyed by its settings and llm-compressor's version), for tests that only read it; a
    fresh cache takes the `quantized` fixture's run rather than quantizing a second time."""
    root = Path(os.environ["LMI_COMPILE_CACHE"]).parent / "quantized"  # LMI_TEST_CACHE/quantized

    def get(method: str) -> Path:
        spec = _small_spec(**METHOD_SETTINGS[method])
        identity = json.dumps([spec.model_dump(mode="json"), version("llmcompressor")], sort_keys=True)
        folder = root / f"{method}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
        if not (folder / REPORT_NAME).is_file():
            staging = root / f".{folder.name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(quantized(method)[0].model_dir, staging)
            staging.rename(folder)  # whole or not at all
        return folder

    return get
