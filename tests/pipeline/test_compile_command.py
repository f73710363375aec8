"""`lmi-compile compile MODEL_DIR --out DIR`, the compile stage alone, as users run it; and the
CLI's one error handler (in `main`) on its failures."""

from __future__ import annotations

import subprocess

from safetensors import safe_open


def _compile(python, cli_env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "lmi_compile", "compile", *map(str, args)], env=cli_env,
                          capture_output=True, text=True, timeout=300)


def test_compile_writes_the_torch_targets_rank_shards(tmp_path, python, cli_env, smollm2_dir):
    out = tmp_path / "compiled"
    # planned for a 4-GPU instance (TP 3: SmolLM2's 3 KV heads), compiled here without its GPUs
    done = _compile(python, cli_env, smollm2_dir, "--out", out, "--backend", "torch", "--tp-degree", "3",
                    "--for", "ml.g5.12xlarge")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"for torch (TP 3, bfloat16) → {out}")
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert sorted(p.name for p in out.glob("rank*")) == ["rank0", "rank1", "rank2"]
    with safe_open(out / "rank2" / "model.safetensors", "pt") as rank2:
        name = next(k for k in rank2.keys() if k.endswith("self_attn.q_proj.weight"))
        assert rank2.get_slice(name).get_shape() == [576 // 3, 576]  # SmolLM2's 576 q rows split over 3 ranks

    again = _compile(python, cli_env, smollm2_dir, "--out", out)
    assert again.returncode == 2 and "already exists and is not an empty folder" in again.stderr


def test_errors_are_one_message_from_main(tmp_path, python, cli_env):
    done = _compile(python, cli_env, tmp_path / "missing", "--out", tmp_path / "out", "--backend", "torch")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "hint: " in done.stderr and "Traceback" not in done.stderr
    debug = subprocess.run([python, "-m", "lmi_compile", "--debug", "compile", str(tmp_path / "missing"), "--out",
                            str(tmp_path / "out")], env=cli_env, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
