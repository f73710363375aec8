"""fetch: each way a model folder can be unusable gives a clear error, and good sources (a
local folder, an S3 prefix, an S3 model.tar.gz, the hub cache, the bundled model) work."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from lmi_compile.recipe import SourceSpec
from lmi_compile.stages.fetch import fetch
from lmi_runtime.errors import ConfigError, ModelFolderError
from lmi_runtime.modelfolder import select_model_files, validate_model_folder
from lmi_runtime.storage import Transfer, open_storage

from storage_folders import write_model


def _upload_folder(folder, uri, options):
    files = [p for p in folder.rglob("*") if p.is_file()]
    open_storage(uri, options).upload([Transfer(p, p.relative_to(folder).as_posix(), p.stat().st_size) for p in files])


# -- validation ---------------------------------------------------------------------------


def test_valid_sharded_folder(tmp_path):
    model = validate_model_folder(write_model(tmp_path / "m", shards=2))
    assert model.architecture == "LlamaForCausalLM" and model.format == "safetensors"
    assert model.weight_files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_gguf_only_folder_is_refused_with_the_reason(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "model.Q4_K_M.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(64))
    with pytest.raises(ModelFolderError, match="only GGUF weights") as err:
        validate_model_folder(folder)
    assert "bundled://smollm2" in err.value.hint and "convert" in err.value.hint


@pytest.mark.parametrize(
    ("remove", "message"),
    [("config.json", "has no config.json"), ("tokenizer.json", "has no tokenizer"), ("model.safetensors", "has no model weights")],
)
def test_missing_parts(tmp_path, remove, message):
    folder = write_model(tmp_path / "m")
    (folder / remove).unlink()
    with pytest.raises(ModelFolderError, match=message):
        validate_model_folder(folder)


def test_unparseable_config(tmp_path):
    folder = write_model(tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="config.json is not valid JSON"):
        validate_model_folder(folder)


def test_index_with_a_missing_shard(tmp_path):
    folder = write_model(tmp_path / "m", shards=2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="references shards that are missing: model-00002-of-00002"):
        validate_model_folder(folder)


def test_index_that_disagrees_with_its_shards(tmp_path):
    folder = write_model(tmp_path / "m", shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="lacks 1 tensors the index lists \\(e.g. lm_head.weight\\)"):
        validate_model_folder(folder)


def test_truncated_safetensors(tmp_path):
    folder = write_model(tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ModelFolderError, match="not a valid safetensors file"):
        validate_model_folder(folder)


def test_pickle_weights_need_permission(tmp_path):
    folder = write_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelFolderError, match="only pickle weights \\(pytorch_model.bin\\)") as err:
        validate_model_folder(folder)
    assert "--allow-pickle" in err.value.hint
    assert validate_model_folder(folder, allow_pickle=True).format == "pickle"


def test_auto_map_needs_trust_remote_code(tmp_path):
    config = {"architectures": ["CustomForCausalLM"], "auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}
    folder = write_model(tmp_path / "m", config=config)
    with pytest.raises(ModelFolderError, match="auto_map") as err:
        validate_model_folder(folder)
    assert "--trust-remote-code" in err.value.hint
    assert validate_model_folder(folder, trust_remote_code=True).architecture == "CustomForCausalLM"


# -- which files to fetch (hub listings, S3 listings) -------------------------------------

LLAMA_REPO = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
    "original/consolidated.00.pth", "original/tokenizer.model", "onnx/model.onnx", "modeling_llama.py",
]  # fmt: skip


def test_selection_prefers_safetensors_over_pickle():
    chosen = select_model_files(LLAMA_REPO, "org/llama", allow_pickle=True)
    assert not any(f.endswith((".bin", ".pth", ".onnx", ".py")) or "/" in f for f in chosen)
    assert {"model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "config.json"} <= set(chosen)
    assert "modeling_llama.py" in select_model_files(LLAMA_REPO, "org/llama", trust_remote_code=True)


def test_selection_falls_back_to_pickle_only_when_allowed():
    repo = [f for f in LLAMA_REPO if not f.endswith(".safetensors")]
    with pytest.raises(ModelFolderError, match="only pickle weights"):
        select_model_files(repo, "org/old")
    assert "pytorch_model-00001-of-00002.bin" in select_model_files(repo, "org/old", allow_pickle=True)


def test_hub_gguf_repo_is_refused_before_any_download(tmp_path):
    from lmi_runtime.storage.hub import hub_download

    listing = ["README.md", "smollm2-135m.Q4_K_M.gguf", "smollm2-135m.Q8_0.gguf"]
    with pytest.raises(ModelFolderError, match="only GGUF weights"):
        hub_download("someone/SmolLM2-GGUF", tmp_path / "dest", list_files=lambda: listing)
    assert not (tmp_path / "dest").exists()


def test_hub_offline_uses_the_cached_snapshot(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123abcd"
    write_model(snapshot)
    (snapshot / "pytorch_model.bin").write_bytes(b"pickle")  # present in the repo, never taken
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = fetch(SourceSpec(uri="org/tiny"), tmp_path / "out")
    assert sorted(p.name for p in model.path.iterdir()) == [".lmi-fetch.json", "config.json", "model.safetensors", "tokenizer.json"]
    from lmi_runtime.errors import StorageError

    with pytest.raises(StorageError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        fetch(SourceSpec(uri="org/absent"), tmp_path / "out2")


# -- the fetch stage ------------------------------------------------------------------------


def test_local_folder_and_refetch(tmp_path):
    src = write_model(tmp_path / "src")
    (src / "model.Q4.gguf").write_bytes(b"GGUF")
    model = fetch(SourceSpec(uri=str(src)), tmp_path / "out")
    assert model.path == tmp_path / "out" and not (model.path / "model.Q4.gguf").exists()
    (src / "generation_config.json").write_text("{}")
    assert (fetch(SourceSpec(uri=str(src)), tmp_path / "out").path / "generation_config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no staging left behind


def test_failed_validation_leaves_nothing(tmp_path):
    src = write_model(tmp_path / "src", tokenizer=False)
    with pytest.raises(ModelFolderError, match="no tokenizer"):
        fetch(SourceSpec(uri=str(src)), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="was not written by lmi-compile fetch"):
        fetch(SourceSpec(uri=str(write_model(tmp_path / "src"))), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_s3_prefix(tmp_path, bucket, options):
    src = write_model(tmp_path / "src", shards=2)
    (src / "pytorch_model.bin").write_bytes(b"pickle")
    _upload_folder(src, f"s3://{bucket}/models/tiny", options)
    model = fetch(SourceSpec(uri=f"s3://{bucket}/models/tiny"), tmp_path / "out", options)
    assert model.format == "safetensors" and len(model.weight_files) == 2
    assert not (model.path / "pytorch_model.bin").exists()


def _tarball(folder, top: str | None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=f"{top}/{path.name}" if top else path.name)
    return buffer.getvalue()


@pytest.mark.parametrize("top", [None, "model"])
def test_s3_model_tar_gz(tmp_path, bucket, options, s3, top):
    src = write_model(tmp_path / "src")
    s3.client().put_object(Bucket=bucket, Key="sm/model.tar.gz", Body=_tarball(src, top))
    model = fetch(SourceSpec(uri=f"s3://{bucket}/sm/model.tar.gz"), tmp_path / "out", options)
    assert (model.path / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [("../escape.txt", tarfile.REGTYPE, "'..' component"), ("/etc/evil", tarfile.REGTYPE, "absolute path"),
     ("config-link", tarfile.SYMTYPE, "links and special files")],
)  # fmt: skip
def test_unsafe_archive_is_refused(tmp_path, name, kind, reason):
    archive = tmp_path / "model.tar.gz"
    src = write_model(tmp_path / "src")
    with tarfile.open(archive, "w:gz") as tar:
        for path in src.iterdir():
            tar.add(path, arcname=path.name)
        member = tarfile.TarInfo(name)
        member.type = kind
        member.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
        member.size = 0 if kind == tarfile.SYMTYPE else 4
        tar.addfile(member, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
    with pytest.raises(ModelFolderError, match=reason):
        fetch(SourceSpec(uri=str(archive)), tmp_path / "out" / "m")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "m").exists()


def test_bundled_model(tmp_path, smollm2_dir):
    model = fetch(SourceSpec(uri="bundled://smollm2"), tmp_path / "smol")
    assert model.architecture == "LlamaForCausalLM" and model.weight_files == ["model.safetensors"]
    assert (model.path / "model.safetensors").stat().st_size == (smollm2_dir / "model.safetensors").stat().st_size


def test_revision_only_for_the_hub(tmp_path):
    with pytest.raises(ConfigError, match="revision"):
        fetch(SourceSpec(uri=str(write_model(tmp_path / "src")), revision="v1"), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_missing_local_source(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        fetch(SourceSpec(uri=str(tmp_path / "nope")), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
