"""Publish to and download from a real S3 server (SeaweedFS) with the real s5cmd binary."""

from __future__ import annotations

import json
import re

import pytest

from lmi_compile.stages.publish import publish
from lmi_runtime.artifact.download import download_artifact
from lmi_runtime.artifact.folder import read_manifest
from lmi_runtime.artifact.manifest import MANIFEST_NAME
from lmi_runtime.errors import ArtifactError, StorageError
from lmi_runtime.storage import open_storage
from lmi_runtime.storage.s5cmd import find_s5cmd


def test_s5cmd_is_the_real_binary():
    binary = find_s5cmd()
    assert binary and binary.endswith("s5cmd/bin/s5cmd")


def test_round_trip_verifies_every_file(artifact, bucket, options, tmp_path):
    uri = f"s3://{bucket}/models/m1"
    ref = publish(artifact, uri, options)
    manifest = read_manifest(artifact)
    assert ref.tool == "s5cmd" and sorted(ref.sent) == sorted(e.path for e in manifest.all_files())

    # every object carries the sha256 that resume and re-publish rely on
    storage = open_storage(uri, options)
    digests = storage.stored_digests([e.path for e in manifest.all_files()])
    assert digests == {e.path: e.sha256 for e in manifest.all_files()}

    got = download_artifact(uri, tmp_path / "all", s3_options=options)
    assert got == manifest
    for entry in manifest.all_files():
        assert (tmp_path / "all" / entry.path).read_bytes() == (artifact / entry.path).read_bytes()
    assert (tmp_path / "all" / MANIFEST_NAME).read_bytes() == (artifact / MANIFEST_NAME).read_bytes()

    download_artifact(uri, tmp_path / "r1", rank=1, s3_options=options)
    fetched = sorted(p.relative_to(tmp_path / "r1").as_posix() for p in (tmp_path / "r1").rglob("*") if p.is_file())
    assert fetched == sorted([MANIFEST_NAME] + [e.path for e in manifest.group_for_rank(1)])
    assert not any(f.startswith("rank0/") for f in fetched)

    with pytest.raises(ArtifactError, match="no files for rank 5"):
        download_artifact(uri, tmp_path / "r5", rank=5, s3_options=options)


def test_corrupted_object_is_detected(artifact, bucket, options, s3, tmp_path):
    uri = f"s3://{bucket}/m"
    publish(artifact, uri, options)
    victim = read_manifest(artifact).files["rank0"][1]
    data = bytearray((artifact / victim.path).read_bytes())
    data[100] ^= 0xFF  # same size, one flipped byte
    s3.client().put_object(Bucket=bucket, Key=f"m/{victim.path}", Body=bytes(data))
    with pytest.raises(ArtifactError, match=re.escape(f"do not match the manifest: {victim.path} (content differs)")):
        download_artifact(uri, tmp_path / "dl", s3_options=options)
    assert not (tmp_path / "dl" / MANIFEST_NAME).exists()
    assert not (tmp_path / "dl" / victim.path).exists()
    s3.client().put_object(Bucket=bucket, Key=f"m/{victim.path}", Body=bytes(data[:-1]))  # one byte short
    with pytest.raises(ArtifactError, match=re.escape(f"{victim.path} (missing or wrong size)")):
        download_artifact(uri, tmp_path / "dl", s3_options=options)
    assert not (tmp_path / "dl" / MANIFEST_NAME).exists()
    assert not (tmp_path / "dl" / victim.path).exists()


def test_republish_unchanged_transfers_nothing(artifact, bucket, options, s3, tmp_path):
    uri = f"s3://{bucket}/m"
    first = publish(artifact, uri, options)
    before = {o["Key"]: o["LastModified"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    log = tmp_path / "s5cmd.jsonl"
    again = publish(artifact, uri, options.__class__(**{**options.__dict__, "transfer_log": log}))
    after = {o["Key"]: o["LastModified"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert again.sent == [] and again.bytes_sent == 0 and len(again.skipped) == len(first.sent)
    assert before == after  # not even the manifest was rewritten
    assert not log.exists()  # s5cmd was not even started


def test_changed_file_is_the_only_one_sent(artifact, bucket, options, tmp_path):
    from lmi_runtime.artifact.folder import build_manifest, write_manifest

    uri = f"s3://{bucket}/m"
    publish(artifact, uri, options)
    (artifact / "config.json").write_text('{"architectures": ["MistralForCausalLM"]}')
    old = read_manifest(artifact)
    write_manifest(artifact, build_manifest(artifact, model=old.model, target=old.target))
    ref = publish(artifact, uri, options)
    assert ref.sent == ["config.json"]
    got = download_artifact(uri, tmp_path / "dl", s3_options=options)
    assert json.loads((tmp_path / "dl" / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]
    assert got == read_manifest(artifact)


def test_a_manifest_replaced_since_it_was_read_is_not_overwritten(artifact, bucket, options, tmp_path):
    """Two runs adding profiles to one artifact: the one that read the manifest first must not
    erase what the other published since; it is refused before sending anything."""
    from lmi_runtime.artifact.folder import build_manifest, write_manifest
    from lmi_runtime.storage.base import ABSENT

    uri = f"s3://{bucket}/m"
    storage = open_storage(uri, options)
    with pytest.raises(StorageError, match="changed while this run prepared"):
        publish(artifact, uri, options, based_on="an-old-etag")  # nothing there, yet it expected a version
    publish(artifact, uri, options, based_on=ABSENT)
    read_at = storage.get_bytes(MANIFEST_NAME)[1]
    theirs = tmp_path / "theirs"
    (theirs).mkdir()
    for name in ("config.json",):  # the other run: a changed file and its manifest
        (theirs / name).write_text('{"architectures": ["MistralForCausalLM"]}')
    old = read_manifest(artifact)
    write_manifest(theirs, build_manifest(theirs, model=old.model, target=old.target))
    publish(theirs, uri, options)
    published = storage.get_bytes(MANIFEST_NAME)
    (artifact / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    write_manifest(artifact, build_manifest(artifact, model=old.model, target=old.target))
    with pytest.raises(StorageError, match="another run published there") as err:
        publish(artifact, uri, options, based_on=read_at)
    assert "run again" in err.value.hint
    assert storage.get_bytes(MANIFEST_NAME) == published  # theirs is intact
    assert json.loads(storage.get_bytes("config.json")[0])["architectures"] == ["MistralForCausalLM"]
    with pytest.raises(StorageError, match="changed while"):
        publish(artifact, uri, options, based_on=ABSENT)


def test_boto3_fallback_round_trip(artifact, bucket, options, tmp_path):
    boto = options.__class__(**{**options.__dict__, "tool": "boto3"})
    ref = publish(artifact, f"s3://{bucket}/b", boto)
    assert ref.tool == "boto3" and ref.sent
    download_artifact(f"s3://{bucket}/b", tmp_path / "dl", s3_options=boto)
    # an artifact published by boto3 is recognised by the s5cmd path: nothing to send
    assert publish(artifact, f"s3://{bucket}/b", options).sent == []


def test_unreachable_endpoint_fails_fast_with_a_hint(artifact, options, s3_env, monkeypatch):
    import time

    dead = options.__class__(**{**options.__dict__, "endpoint_url": "http://127.0.0.1:9"})
    start = time.monotonic()
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:9") as err:
        publish(artifact, "s3://some-bucket/x", dead)
    assert time.monotonic() - start < 10
    assert "AWS_ENDPOINT_URL" in err.value.hint


def test_missing_bucket(artifact, options, s3_env):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist") as err:
        publish(artifact, "s3://no-such-bucket-here/x", options)
    assert "create the bucket" in err.value.hint


def test_missing_bucket_in_s5cmd_transfer(options, s3_env, tmp_path):
    """The same clear error when it is s5cmd (not boto3) that meets the missing bucket."""
    from lmi_runtime.storage import Transfer

    storage = open_storage("s3://no-such-bucket-here/x", options)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError, match="does not exist"):
        storage.upload([Transfer(tmp_path / "f", "f", 1)])


def test_wrong_credentials(artifact, bucket, options, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    with pytest.raises(StorageError, match="rejected the credentials") as err:
        publish(artifact, f"s3://{bucket}/m", options)
    assert "definitely-wrong-secret" not in str(err.value)


def test_missing_manifest_means_not_published(bucket, options, tmp_path):
    with pytest.raises(ArtifactError, match="has no lmi-artifact.json"):
        download_artifact(f"s3://{bucket}/nothing-here", tmp_path / "dl", s3_options=options)


def test_traversal_in_remote_manifest_is_refused(artifact, bucket, options, s3, tmp_path):
    uri = f"s3://{bucket}/evil"
    publish(artifact, uri, options)
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["files"]["shared"][0]["path"] = "../../escaped.txt"
    s3.client().put_object(Bucket=bucket, Key=f"evil/{MANIFEST_NAME}", Body=json.dumps(manifest).encode())
    with pytest.raises(ArtifactError, match="unsafe manifest path '../../escaped.txt'"):
        download_artifact(uri, tmp_path / "dl" / "x", s3_options=options)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "dl" / "x").exists()


def test_s5cmd_reports_wrong_credentials(bucket, options, monkeypatch, tmp_path):
    from lmi_runtime.storage import Transfer

    (tmp_path / "f").write_bytes(b"x")
    storage = open_storage(f"s3://{bucket}/m", options)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    with pytest.raises(StorageError, match="rejected the credentials while uploading") as err:
        storage.upload([Transfer(tmp_path / "f", "f", 1)])
    assert "definitely-wrong-secret" not in str(err.value)


def test_manifest_writes_are_conditional(bucket, options):
    """Two publishers cannot silently overwrite each other's manifest (If-None-Match / If-Match)."""
    from lmi_runtime.storage import ABSENT

    storage = open_storage(f"s3://{bucket}/m", options)
    storage.put_bytes(MANIFEST_NAME, b"first", expect=ABSENT)
    with pytest.raises(StorageError, match="changed by someone else"):
        storage.put_bytes(MANIFEST_NAME, b"second", expect=ABSENT)
    _, version = storage.get_bytes(MANIFEST_NAME)
    storage.put_bytes(MANIFEST_NAME, b"third", expect=version)
    with pytest.raises(StorageError, match="changed by someone else"):
        storage.put_bytes(MANIFEST_NAME, b"fourth", expect=version)  # stale version
    assert storage.get_bytes(MANIFEST_NAME)[0] == b"third"
