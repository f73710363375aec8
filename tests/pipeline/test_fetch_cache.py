"""Which sources the fetch stage caches, and what pins their content: S3 objects by key, size and
ETag (a changed object is a new key, so a stale copy is never reused); the bundled model by its
files; hub models and local folders are not copied into the stage cache."""

from __future__ import annotations

from lmi_compile.recipe import SourceSpec
from lmi_compile.stages.fetch import source_identity
from lmi_runtime.storage.s3 import S3Options


def test_s3_sources_are_pinned_by_their_listing(s3, bucket):
    client, options = s3.client(), S3Options(endpoint_url=s3.endpoint, retry_count=0)
    client.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"model_type": "llama"}')
    client.put_object(Bucket=bucket, Key="m/model.safetensors", Body=b"weights v1")
    spec = SourceSpec(uri=f"s3://{bucket}/m")
    first = source_identity(spec, options)
    assert first == source_identity(spec, options)
    assert [key for key, _, _ in first["objects"]] == ["config.json", "model.safetensors"]
    client.put_object(Bucket=bucket, Key="m/model.safetensors", Body=b"weights v2")  # same size, new content
    assert source_identity(spec, options) != first


def test_only_sources_worth_caching_are_pinned(tmp_path, smollm2_dir):
    assert source_identity(SourceSpec(uri="bundled://smollm2"))["files"]
    assert source_identity(SourceSpec(uri=str(smollm2_dir))) is None  # read in place
    assert source_identity(SourceSpec(uri="HuggingFaceTB/SmolLM2-135M-Instruct")) is None  # the hub cache keeps it
