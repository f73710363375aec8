"""Integrity where data comes in or is reused (issue 16): symlinks out of a model folder,
publishing into one's own source, safetensors whose data does not fit the file, a tokenizer
that does not parse, a tampered stage-cache entry, a killed run's work folder, a full disk
and an offline hub — each a clear error (or a clean re-run), never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from lmi_compile.recipe import SourceSpec
from lmi_compile.stage_cache import StageCache, stage_key
from lmi_compile.stages.fetch import fetch
from lmi_compile.workdir import OWNER, PREFIX, clean_stale
from lmi_runtime.errors import ModelFolderError, os_failure
from lmi_runtime.modelfolder import validate_model_folder

from storage_folders import write_model


def _cli(python, env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "lmi_compile", *args], env=env, capture_output=True, text=True, timeout=timeout)


def _one_message(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return " ".join(done.stderr.split())


def _recipe(tmp_path: Path, source: Path | str, out: Path | str, name: str = "m") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: {name}\nsource: {{uri: '{source}'}}\nquantize: {{method: none}}\n"
                    f"target: {{backend: torch}}\noutput: {{uri: '{out}', cache_dir: '{tmp_path / 'cache'}'}}\n")
    return path


# -- symlinks and overlapping folders -------------------------------------------------------


def test_run_refuses_a_model_folder_with_a_symlink_out(tmp_path, python, cli_env, smollm2_dir, copy_artifact):
    model = copy_artifact(smollm2_dir, tmp_path / "model")  # the real model (weights hard-linked)
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the model\n")
    (model / "notes.txt").symlink_to(secret)
    done = _cli(python, cli_env, "run", str(_recipe(tmp_path, model, tmp_path / "out")))
    assert "refusing model file 'notes.txt': it resolves outside" in _one_message(done)
    assert not (tmp_path / "out").exists()
    (model / "notes.txt").unlink()
    (tmp_path / "config.json").write_bytes((model / "config.json").read_bytes())
    (model / "config.json").unlink()
    (model / "config.json").symlink_to(tmp_path / "config.json")
    with pytest.raises(ModelFolderError, match="'config.json': it resolves outside"):
        fetch(SourceSpec(uri=str(model)), tmp_path / "fetched")
    done = _cli(python, cli_env, "plan", str(_recipe(tmp_path, model, tmp_path / "out")))
    assert "'config.json': it resolves outside" in _one_message(done)


def test_publish_into_the_artifact_itself_is_refused(tmp_path, python, cli_env):
    from storage_folders import write_artifact

    art = write_artifact(tmp_path / "art", ranks=1, files_per_rank=1, size=1024)
    for dest in (art / "sub", art, tmp_path):
        done = _cli(python, cli_env, "publish", str(art), str(dest))
        assert "must not overlap" in _one_message(done) or "is the artifact folder itself" in done.stderr
    assert not (art / "sub").exists()


def test_recipe_name_cannot_leave_the_output_root(tmp_path, python, cli_env):
    recipe = _recipe(tmp_path, "bundled://smollm2", "./artifacts/{name}", name="../../escaped")
    done = subprocess.run([python, "-m", "lmi_compile", "run", str(recipe)], env=cli_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "name = '../../escaped'" in _one_message(done)
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "artifacts").exists()


# -- what fetch validates -----------------------------------------------------------------


def _safetensors(path: Path, offsets: list[int], data: bytes) -> None:
    """A hand-made safetensors file: one F32 tensor at `offsets` over the data section `data`."""
    header = json.dumps({"model.layers.0.weight": {"dtype": "F32", "shape": [64, 64], "data_offsets": offsets}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


def test_fetch_refuses_safetensors_whose_data_does_not_fit(tmp_path):
    folder = write_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])  # header intact, data cut in half
    with pytest.raises(ModelFolderError, match="needs bytes up to .* of the data section, which holds"):
        fetch(SourceSpec(uri=str(folder)), tmp_path / "out")
    _safetensors(weights, [0, 64 * 64 * 4], bytes(64 * 64 * 4))
    validate_model_folder(folder)  # a well-formed file passes
    _safetensors(weights, [0, 10**12], bytes(64 * 64 * 4))
    with pytest.raises(ModelFolderError, match="needs bytes up to 1000000000000"):
        validate_model_folder(folder)
    assert not (tmp_path / "out").exists()


def test_fetch_refuses_a_tokenizer_that_does_not_parse(tmp_path):
    folder = write_model(tmp_path / "m")
    (folder / "tokenizer.json").write_bytes(b"")
    with pytest.raises(ModelFolderError, match="tokenizer.json does not parse"):
        fetch(SourceSpec(uri=str(folder)), tmp_path / "out")
    (folder / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')  # cut off
    with pytest.raises(ModelFolderError, match="tokenizer.json does not parse"):
        validate_model_folder(folder)
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    validate_model_folder(folder)
    (folder / "tokenizer_config.json").write_bytes(b"")
    with pytest.raises(ModelFolderError, match="tokenizer_config.json is not a JSON object"):
        validate_model_folder(folder)


def test_the_real_model_still_fetches(smollm2_dir, tmp_path):
    model = fetch(SourceSpec(uri=str(smollm2_dir)), tmp_path / "out")
    assert model.weight_files == ["model.safetensors"]


# -- stage cache ----------------------------------------------------------------------------


def test_stage_cache_entry_changed_in_place_is_not_reused(tmp_path):
    model = write_model(tmp_path / "model")
    cache = StageCache(tmp_path / "cache")
    key = stage_key("quantize", [model], {"method": "none"})
    stored = cache.put(key, model, stage="quantize")
    assert cache.get(key) == stored
    weights = stored / "model.safetensors"
    with open(weights, "r+b") as handle:  # 64 bytes changed, same size
        handle.seek(weights.stat().st_size - 100)
        handle.write(os.urandom(64))
    with pytest.warns(UserWarning, match="model.safetensors changed since it was cached"):
        assert cache.get(key) is None  # a miss: the stage runs again
    assert not stored.exists()
    assert cache.put(key, model) == stored and cache.get(key) == stored


# -- work folders, full disks, offline hubs ---------------------------------------------------


def test_a_killed_runs_work_folder_is_removed_by_the_next_run(tmp_path, python, cli_env, smollm2_dir):
    env = cli_env | {"TMPDIR": str(tmp_path)}
    recipe = _recipe(tmp_path, "bundled://smollm2", tmp_path / "out")
    proc = subprocess.Popen([python, "-m", "lmi_compile", "run", str(recipe)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any((f / "fetch").exists() for f in tmp_path.glob(f"{PREFIX}*")):  # the fetch stage is writing
        assert proc.poll() is None and time.monotonic() < deadline, "the run never started its work folder"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list(tmp_path.glob(f"{PREFIX}*"))
    assert left and (left[0] / OWNER).is_file()  # kill -9 skipped the clean-up
    alive = tmp_path / f"{PREFIX}alive"  # another run still working: kept
    alive.mkdir()
    (alive / OWNER).write_text(f"{os.getpid()}:")
    assert clean_stale(tmp_path) == left
    assert not left[0].exists() and alive.exists()


@pytest.fixture()
def full_tmpfs(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("needs permission to mount a 1 MB tmpfs (a full disk)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_message_with_the_place_to_free(tmp_path, python, cli_env, full_tmpfs, smollm2_dir):
    recipe = _recipe(tmp_path, "bundled://smollm2", tmp_path / "out")
    done = _cli(python, cli_env | {"TMPDIR": str(full_tmpfs)}, "run", str(recipe))
    message = _one_message(done)
    assert f"no space left on the device holding {full_tmpfs}" in message and "hint: free space under" in message
    assert "Errno" not in message and not list(full_tmpfs.iterdir())  # and the work folder is gone


def test_a_tree_copy_onto_a_full_disk_says_so(tmp_path, full_tmpfs, smollm2_dir):
    """copytree gathers its failures into one shutil.Error: the message still says what a plain
    copy's would (CI once printed only "error: Error")."""
    with pytest.raises(shutil.Error) as caught:
        shutil.copytree(smollm2_dir, full_tmpfs / "model")
    failure = os_failure(caught.value)
    assert f"no space left on the device holding {full_tmpfs}" in failure.message
    mixed = shutil.Error([("a", str(tmp_path / "b"), "permission trouble")])
    assert os_failure(mixed).message == f"permission trouble: {tmp_path / 'b'}"


def test_an_offline_hub_fails_fast(tmp_path, python, cli_env):
    closed = f"http://127.0.0.1:{_closed_port()}"
    env = cli_env | {"HF_ENDPOINT": closed, "HF_HUB_OFFLINE": "0"}
    env.pop("HTTPS_PROXY", None)
    recipe = _recipe(tmp_path, "HuggingFaceTB/SmolLM2-135M", tmp_path / "out")
    for args in (("plan", str(recipe)), ("fetch", "HuggingFaceTB/SmolLM2-135M", "--out", str(tmp_path / "f"))):
        start = time.monotonic()
        done = _cli(python, env, *args)
        assert "this machine looks offline" in _one_message(done)
        assert time.monotonic() - start < 15  # was 26-39 s of retries (the import of the CLI is most of this)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
