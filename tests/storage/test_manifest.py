"""Manifest build/write/read/verify, and paths that try to leave the artifact root."""

from __future__ import annotations

import json
import os

import pytest

from lmi_runtime.artifact.folder import build_manifest, parse_manifest, read_manifest, verify_folder, write_manifest
from lmi_runtime.artifact.manifest import MANIFEST_NAME, FileEntry, ModelInfo, TargetInfo
from lmi_runtime.errors import ArtifactError

INFO = dict(model=ModelInfo(source="test"), target=TargetInfo(backend="torch", tp_degree=2))


def test_groups_sizes_and_hashes(artifact):
    manifest = read_manifest(artifact)
    assert sorted(manifest.files) == ["rank0", "rank1", "shared"]
    assert [e.path for e in manifest.files["shared"]] == ["config.json", "tokenizer.json"]
    assert all(e.path.startswith("rank1/") for e in manifest.files["rank1"])
    import hashlib

    entry = manifest.files["rank0"][0]
    data = (artifact / entry.path).read_bytes()
    assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
    verify_folder(artifact, manifest)


def test_verify_lists_every_problem(artifact):
    manifest = read_manifest(artifact)
    r0 = manifest.files["rank0"]
    (artifact / r0[0].path).unlink()  # missing
    (artifact / r0[1].path).write_bytes(b"short")  # wrong size
    data = bytearray((artifact / r0[2].path).read_bytes())
    data[0] ^= 1
    (artifact / r0[2].path).write_bytes(bytes(data))  # same size, other content
    (artifact / "rank1" / "stray.bin").write_bytes(b"x")  # extra
    with pytest.raises(ArtifactError) as err:
        verify_folder(artifact, manifest)
    message = str(err.value)
    for expected in (f"missing: {r0[0].path}", f"wrong size: {r0[1].path}", f"sha256 mismatch: {r0[2].path}", "not in the manifest: rank1/stray.bin"):
        assert expected in message


def test_a_large_file_is_checked_by_its_blocks(tmp_path):
    """Blocks are what is compared (each on its own core): a flipped byte in the last block is
    found, and so is a manifest whose blocks disagree with the file even where its sha256 agrees."""
    import hashlib

    from lmi_runtime.checksums import BLOCK, check_files

    root = tmp_path / "art"
    (root / "rank0").mkdir(parents=True)
    big = root / "rank0" / "model.safetensors"
    big.write_bytes(os.urandom(2 * BLOCK + 4096))
    (root / "config.json").write_text("{}")
    manifest = build_manifest(root, **INFO)
    entry, small = manifest.files["rank0"][0], manifest.files["shared"][0]
    data = big.read_bytes()
    assert small.blocks is None and entry.sha256 == hashlib.sha256(data).hexdigest()
    assert entry.blocks == [hashlib.sha256(data[i:i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]
    verify_folder(root, manifest)
    swapped = entry.model_copy(update={"blocks": entry.blocks[::-1]})
    assert check_files({big: swapped.wanted()}) == {big: False}
    with big.open("r+b") as handle:
        handle.seek(2 * BLOCK + 100)
        handle.write(bytes([data[2 * BLOCK + 100] ^ 1]))
    with pytest.raises(ArtifactError, match="sha256 mismatch: rank0/model.safetensors"):
        verify_folder(root, manifest)


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside.bin", "rank0/../../x", "rank0\\..\\x", "C:/x", "a//b", "./a"]
)
def test_unsafe_paths_are_refused_on_write_and_read(artifact, path):
    manifest = read_manifest(artifact)
    group = "rank0" if path.startswith("rank0/") else "shared"
    bad = manifest.model_copy(deep=True)
    bad.files[group].append(FileEntry(path=path, size=1, sha256="0" * 64))
    with pytest.raises(ArtifactError, match="unsafe manifest path"):
        write_manifest(artifact, bad)
    raw = json.loads((artifact / MANIFEST_NAME).read_text())
    raw["files"][group].append({"path": path, "size": 1, "sha256": "0" * 64})
    with pytest.raises(ArtifactError, match="unsafe manifest path"):
        parse_manifest(json.dumps(raw).encode(), "test")


def test_misplaced_and_duplicate_entries(artifact):
    raw = json.loads((artifact / MANIFEST_NAME).read_text())
    moved = json.loads(json.dumps(raw))
    moved["files"]["shared"].append(moved["files"]["rank0"][0])  # a rank file in the shared group
    with pytest.raises(ArtifactError, match="in group 'shared'"):
        parse_manifest(json.dumps(moved).encode(), "test")
    raw["files"]["weird"] = []
    with pytest.raises(ArtifactError, match="unknown file group"):
        parse_manifest(json.dumps(raw).encode(), "test")


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    (folder / "config.json").write_text("{}")
    os.symlink(tmp_path / "secret.txt", folder / "leak.txt")
    with pytest.raises(ArtifactError, match="resolves outside"):
        build_manifest(folder, **INFO)


def test_symlink_inside_the_download_folder_is_not_followed(artifact, tmp_path):
    """A planted symlink in the destination cannot redirect a verified write outside it."""
    from lmi_runtime.artifact.transfer import pull
    from lmi_runtime.storage import open_storage

    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(tmp_path, dest / "rank0")
    with pytest.raises(ArtifactError, match="resolves outside"):
        pull(open_storage(str(artifact)), read_manifest(artifact).files["rank0"], dest)


def test_not_a_manifest(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text('{"format_version": 1}')
    with pytest.raises(ArtifactError, match="not a valid artifact manifest"):
        read_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="has no lmi-artifact.json"):
        read_manifest(tmp_path / "nothing")
