"""The kernel cache's bookkeeping (`lmi_runtime.kernels.cache`): saved whole, loaded only where it
was built, refused elsewhere with both sides named. What it holds (Inductor's and Triton's
compiled code) is built on a GPU: scripts/bench_cold_start.py measures that there."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from lmi_runtime.config.engine_settings import engine_config
from lmi_runtime.errors import ArtifactError, ConfigError
from lmi_runtime.kernels.cache import CacheInfo, KernelCache, for_start, read_info, save

H100 = CacheInfo("sm_90", "2.11.0", "3.6.0", "13.0")
A10G = CacheInfo("sm_86", "2.11.0", "3.6.0", "13.0")


@pytest.fixture
def triton_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)  # begin() sets it; monkeypatch restores it
    folder = tmp_path / "built"
    (folder / "abc").mkdir(parents=True)
    (folder / "abc" / "kernel.cubin").write_bytes(b"\x7fELF compiled")
    return folder


def test_a_saved_cache_loads_where_it_was_built(tmp_path, triton_dir, monkeypatch):
    folder = tmp_path / "cache"
    save(folder, triton_dir, H100)
    assert read_info(folder) == H100
    assert not list(tmp_path.glob(".cache-*"))  # the staging folder was moved in whole
    cache = KernelCache(folder, H100)
    assert cache.begin() is True
    private = os.environ["TRITON_CACHE_DIR"]
    assert (tmp_path / "cache" / "triton" / "abc" / "kernel.cubin").read_bytes() == \
        open(os.path.join(private, "abc", "kernel.cubin"), "rb").read()
    assert private != str(folder / "triton")  # Triton writes into a copy, never into the artifact
    cache.finish()  # loaded: nothing rewritten
    assert read_info(folder) == H100


def test_a_cache_from_another_gpu_is_refused_naming_both(tmp_path, triton_dir):
    folder = tmp_path / "cache"
    save(folder, triton_dir, H100)
    with pytest.raises(ArtifactError, match="sm_90, torch 2.11.0.*this machine runs sm_86") as err:
        KernelCache(folder, A10G).begin()
    assert "--recompile" in err.value.hint


def test_recompile_rebuilds_it_for_this_machine(tmp_path, triton_dir):
    folder = tmp_path / "cache"
    save(folder, triton_dir, H100)
    cache = KernelCache(folder, A10G, recompile=True)
    assert cache.begin() is False
    cache.finish()
    assert read_info(folder) == A10G


def test_a_folder_without_info_is_filled_and_a_read_only_one_is_not(tmp_path, triton_dir):
    half_written = tmp_path / "cache"
    (half_written / "triton").mkdir(parents=True)  # a start killed before info.json: not a cache
    cache = KernelCache(half_written, H100)
    assert cache.begin() is False
    cache.finish()
    assert read_info(half_written) == H100
    shipped = tmp_path / "shipped"
    KernelCache(shipped, H100, writable=False).finish()
    assert not shipped.exists()


def test_an_unreadable_info_says_what_to_do(tmp_path):
    (tmp_path / "info.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable info.json"):
        read_info(tmp_path)


def test_no_cache_on_a_cpu_or_when_switched_off(tmp_path):
    assert for_start(str(tmp_path), tmp_path, torch.device("cpu"), False) is None
    assert for_start("none", tmp_path, torch.device("cuda"), False) is None


def test_settings_flow_from_the_environment_and_are_checked():
    config = engine_config({}, env={"OPTION_KERNEL_CACHE": "/opt/ml/kernels", "OPTION_RECOMPILE": "false"})
    assert (config.kernel_cache, config.recompile) == ("/opt/ml/kernels", False)
    assert engine_config({"recompile": True}, env={}).recompile is True
    with pytest.raises(ConfigError, match="option.recompile"):
        engine_config({}, env={"OPTION_RECOMPILE": "maybe"})


def test_a_corrupt_inductor_file_is_refused_with_what_to_do(tmp_path, triton_dir):
    folder = tmp_path / "cache"
    save(folder, triton_dir, H100)
    (folder / "inductor.bin").write_bytes(b"not a pickle of cache artifacts")
    with pytest.raises(ArtifactError, match="inductor.bin does not load") as err:
        KernelCache(folder, H100).begin()
    assert "--recompile" in err.value.hint


def test_a_folder_of_other_files_or_a_file_is_refused_before_anything_compiles(tmp_path, triton_dir):
    data = tmp_path / "models"
    data.mkdir()
    (data / "weights.safetensors").write_bytes(b"precious")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    for path in (data, a_file):
        with pytest.raises(ArtifactError, match="not a kernel cache and not empty") as err:
            KernelCache(path, H100).begin()
        assert "new or empty folder" in err.value.hint
    assert (data / "weights.safetensors").read_bytes() == b"precious" and a_file.read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert KernelCache(empty, H100).begin() is False  # an empty folder is filled


def _compiled_kernel(triton_dir, monkeypatch, key: str = "ab12" * 16):
    """A compiled kernel as Triton's own cache writes it: its files, and their list by absolute path."""
    from triton.runtime.cache import FileCacheManager

    monkeypatch.setenv("TRITON_CACHE_DIR", str(triton_dir))
    files = FileCacheManager(key)
    group = {name: files.put(data, name) for name, data in (("k.cubin", b"\x7fELF"), ("k.json", '{"name": "k"}'))}
    files.put_group("k.json", group)
    return key


def test_a_copied_cache_finds_the_kernels_triton_compiled_elsewhere(tmp_path, monkeypatch):
    """Triton finds a kernel through its file list, by absolute path: loaded from a copy whose
    original folder is gone, the list must name the copy, or every kernel compiles again."""
    pytest.importorskip("triton")
    from triton.runtime.cache import FileCacheManager

    built = tmp_path / "built"
    key = _compiled_kernel(built, monkeypatch)
    folder = tmp_path / "cache"
    save(folder, built, H100)
    shutil.rmtree(built)  # the start that built it has exited: its private folder is gone
    assert KernelCache(folder, H100).begin() is True
    found = FileCacheManager(key).get_group("k.json")  # what Triton's compile() looks up
    assert sorted(found) == ["k.cubin", "k.json"]
    assert open(found["k.cubin"], "rb").read() == b"\x7fELF"
    assert found["k.cubin"].startswith(os.environ["TRITON_CACHE_DIR"])


def test_a_file_list_that_leaves_its_folder_is_refused(tmp_path, monkeypatch):
    pytest.importorskip("triton")
    built = tmp_path / "built"
    key = _compiled_kernel(built, monkeypatch)
    (built / key / "__grp__k.json").write_text(json.dumps({"child_paths": {"../../secret": "/etc/passwd"}}))
    folder = tmp_path / "cache"
    save(folder, built, H100)
    with pytest.raises(ArtifactError, match="lists '../../secret', which is not a file name") as err:
        KernelCache(folder, H100).begin()
    assert "--recompile" in err.value.hint
