"""The quality gate and the CLI: a miss raises, exits non-zero, and leaves no folder behind."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from lmi_runtime.errors import ConfigError, QualityGateError
from lmi_compile.commands.quantize import load_spec
from lmi_compile.quantize import REPORT_NAME, QuantReport, quantize


def test_missed_threshold_raises_and_leaves_nothing(smollm2_dir, tmp_path, small_spec):
    out = tmp_path / "out" / "int8"
    # int8 weights cost a little perplexity (a few tenths of a percent on one 512-token window;
    # the computation is deterministic): a zero-increase gate must reject them.
    spec = small_spec(method="static_int8", quality={"max_tokens": 512, "seq_len": 512, "max_ppl_increase": 0.0})
    with pytest.raises(QualityGateError) as err:
        quantize(smollm2_dir, spec, out, show_progress=False)
    message = err.value.message
    assert "static_int8 raised perplexity from" in message and "above the allowed +0.00%" in message
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary folder left either


def test_cli_gate_failure_exits_nonzero_with_the_numbers(smollm2_dir, tmp_path, cli_env):
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "lmi_compile", "quantize", str(smollm2_dir), "--out", str(out),
           "--method", "static_int8", "--eval-tokens", "512", "--max-ppl-increase", "0"]
    # ~30 s alone on 2 cores; the limit only catches a hang
    run = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 2, run.stderr
    assert "error:" in run.stderr and "raised perplexity from" in run.stderr and "+0.00%" in run.stderr
    # stderr is not a terminal: the progress is plain lines, one per evaluation window
    assert "perplexity, original (windows): 1/1 (100%)" in run.stderr and "\x1b[" not in run.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_method_none_copies_through_with_a_report(smollm2_dir, tmp_path, cli_env):
    out = tmp_path / "copy"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"source": {"uri": "bundled://smollm2"}, "quantize": {"method": "none"}}))
    cmd = [sys.executable, "-m", "lmi_compile", "quantize", str(smollm2_dir), "--out", str(out), "--recipe", str(recipe)]
    run = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    assert (out / "model.safetensors").stat().st_size == (smollm2_dir / "model.safetensors").stat().st_size
    assert QuantReport.load(out).method == "none" and REPORT_NAME in run.stdout


def test_cli_bad_group_size_is_a_clear_error(smollm2_dir, tmp_path, cli_env):
    cmd = [sys.executable, "-m", "lmi_compile", "quantize", str(smollm2_dir), "--out", str(tmp_path / "g"),
           "--method", "gptq", "--group-size", "128"]
    run = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 2
    assert "group size 128 does not divide" in run.stderr and "16, 32, 64" in run.stderr
    assert not (tmp_path / "g").exists()


def test_recipe_file_and_flags_combine(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "source": {"uri": "bundled://smollm2"},
        "quantize": {"method": "gptq", "group_size": "auto", "calibration": {"num_samples": 16}},
    }))
    spec = load_spec(recipe, {"calibration.seq_len": 256, "desc_act": True, "bits": None})
    assert (spec.method, spec.group_size, spec.desc_act) == ("gptq", "auto", True)
    assert (spec.calibration.num_samples, spec.calibration.seq_len) == (16, 256)
    bare = tmp_path / "bare.yaml"
    bare.write_text("method: awq\nalpha: 3\n")
    with pytest.raises(ConfigError, match="alpha"):
        load_spec(bare, {})


def test_existing_output_folder_is_refused(smollm2_dir, tmp_path, small_spec):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        quantize(smollm2_dir, small_spec(method="none"), tmp_path, show_progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"
