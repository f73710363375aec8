"""Weights read while they download (`artifact.stream`): a reader follows a growing file, a bad
download fails its readers and leaves nothing behind, and an s3:// artifact (real SeaweedFS,
real s5cmd) serves the same tokens as the local one."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from lmi_compile.stages.publish import publish
from lmi_runtime.artifact.manifest import FileEntry
from lmi_runtime.artifact.stream import Arrival, Follower
from lmi_runtime.backends.loader import load_backend
from lmi_runtime.backends.staged_read import StagedReader
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.errors import ArtifactError, StorageError
from lmi_runtime.locate import inspect_folder, open_location, resolve_location
from lmi_runtime.storage.s3 import S3Options

from served import lmi_serve

from .test_loading import PROMPT, run_engine, token_ids

WEIGHTS = "rank0/model.safetensors"


class Recorder:
    """A `Growing` that remembers which waits have returned."""

    def __init__(self, arrival: Arrival):
        self.arrival, self.size, self.returned = arrival, arrival.size, []

    def wait(self, end: int) -> None:
        self.arrival.wait(end)
        self.returned.append(end)


@pytest.fixture()
def weights_file(tmp_path) -> tuple[dict[str, torch.Tensor], bytes]:
    tensors = {"a": torch.randn(1024, 1024), "b": torch.arange(2**20, dtype=torch.int32)}
    save_file(tensors, str(tmp_path / "src.safetensors"))
    return tensors, (tmp_path / "src.safetensors").read_bytes()


def arrival_for(dest: Path, data: bytes) -> Arrival:
    return Arrival(dest, FileEntry(path=WEIGHTS, size=len(data), sha256=hashlib.sha256(data).hexdigest()))


def test_a_reader_follows_a_file_while_it_downloads(weights_file, tmp_path):
    tensors, data = weights_file
    half, gate, dest = len(data) // 2, threading.Event(), tmp_path / "dl" / "model.safetensors"
    dest.parent.mkdir()
    dest.write_bytes(data)  # a complete-looking file from an earlier start must not count as landed

    def download() -> None:
        with dest.open("wb") as out:
            out.write(data[:half])
            out.flush()
            assert gate.wait(60)
            out.write(data[half:])

    arrival = arrival_for(dest, data)
    watcher = threading.Thread(target=arrival.follow, args=(download, lambda n: None))
    watcher.start()
    recorder, got = Recorder(arrival), {}
    reader = threading.Thread(target=lambda: got.update(StagedReader(torch.device("cpu"), 1, 2**18).read(dest, recorder)))
    reader.start()
    deadline = time.monotonic() + 30
    while max(recorder.returned, default=0) < half - 2**18 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert half - 2**18 <= max(recorder.returned) <= half  # read up to what had landed, no further
    assert reader.is_alive() and not got
    gate.set()
    reader.join(30)
    watcher.join(30)
    arrival.wait_verified()
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_a_worker_follows_rank_0s_download_and_gives_up_with_it(weights_file, tmp_path):
    """A tensor-parallel worker's side (`Follower`): it reads what has landed, waits for the
    rest, and fails when the file it saw disappears (rank 0 deleted a bad download) or rank 0
    stops the start."""
    tensors, data = weights_file
    dest, gate, half = tmp_path / "model.safetensors", threading.Event(), len(data) // 2

    def download() -> None:  # rank 0's writer
        with dest.open("wb") as out:
            out.write(data[:half])
            out.flush()
            assert gate.wait(60)
            out.write(data[half:])

    follower, got = Follower(dest, WEIGHTS, len(data), abandoned=lambda: False), {}
    reader = threading.Thread(target=lambda: got.update(StagedReader(torch.device("cpu"), 1, 2**18).read(dest, follower)))
    reader.start()  # before the file exists: it waits for it
    writer = threading.Thread(target=download)
    writer.start()
    time.sleep(0.5)
    assert reader.is_alive() and not got  # held at the half that has landed
    gate.set()
    reader.join(30)
    writer.join(30)
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)
    dest.unlink()
    with pytest.raises(ArtifactError, match=f"{WEIGHTS}: rank 0's download of it failed"):
        follower.wait(len(data))
    stopped = Follower(tmp_path / "not-yet.safetensors", WEIGHTS, 10, abandoned=lambda: True)
    with pytest.raises(ArtifactError, match="rank 0 stopped the start"):
        stopped.wait(10)


@pytest.mark.parametrize("fault", ["short", "altered"])
def test_a_bad_download_fails_its_readers_and_is_deleted(weights_file, tmp_path, fault):
    _, data = weights_file
    dest = tmp_path / "model.safetensors"
    sent = data[: len(data) // 2] if fault == "short" else data[:-1] + bytes([data[-1] ^ 1])
    arrival = arrival_for(dest, data)
    arrival.follow(lambda: dest.write_bytes(sent), lambda n: None)
    expected = "ended after" if fault == "short" else "sha256"
    with pytest.raises(ArtifactError, match=expected):
        arrival.wait_verified()
    with pytest.raises(ArtifactError, match=expected):
        StagedReader(torch.device("cpu"), 1).read(dest, arrival)
    assert not dest.exists()


@pytest.fixture()
def published(smollm2_artifact, bucket, s3_env, tmp_path) -> str:
    uri = f"s3://{bucket}/smollm2"
    publish(smollm2_artifact, uri, S3Options.from_env())
    return uri


def test_s3_artifact_loads_while_its_weights_stream(published, smollm2_artifact, s3_env, tmp_path, reference):
    env = s3_env | {"LMI_SERVE_CACHE": str(tmp_path / "cache")}
    location = open_location(published, env)
    assert list(location.arriving) == [WEIGHTS]
    files = inspect_folder(location.path, arriving=location.arriving)
    assert list(files.growing) == files.weights
    backend = load_backend(files, EngineConfig(max_batch_size=2))
    files.wait_verified()
    assert token_ids(run_engine(backend, [PROMPT], 8)[0]) == reference(PROMPT, 8)
    assert (location.path / WEIGHTS).read_bytes() == (smollm2_artifact / WEIGHTS).read_bytes()
    again = open_location(published, env)
    assert again.path == location.path and again.arriving == {}  # in the cache, digest known: nothing fetched


def test_s3_weights_altered_after_publishing_are_refused(published, s3, bucket, s3_env, tmp_path):
    key = f"smollm2/{WEIGHTS}"
    body = bytearray(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # same size, one flipped byte
    s3.client().put_object(Bucket=bucket, Key=key, Body=bytes(body))
    env = s3_env | {"LMI_SERVE_CACHE": str(tmp_path / "cache")}
    location = open_location(published, env)
    with pytest.raises(ArtifactError, match=f"{WEIGHTS}: downloaded, but its sha256"):
        location.arriving[WEIGHTS].wait_verified()
    assert not (location.path / WEIGHTS).exists()
    with pytest.raises(ArtifactError, match="sha256"):
        resolve_location(published, env)


@pytest.mark.parametrize("tool", ["s5cmd", "boto3"])
def test_s3_weights_missing_from_the_bucket_name_the_object(published, s3, bucket, s3_env, tmp_path, monkeypatch, tool):
    monkeypatch.setenv("LMI_S3_TOOL", tool)
    s3.client().delete_object(Bucket=bucket, Key=f"smollm2/{WEIGHTS}")
    location = open_location(published, s3_env | {"LMI_SERVE_CACHE": str(tmp_path / "cache")})
    with pytest.raises(StorageError, match=f"{bucket}/smollm2/{WEIGHTS}"):
        location.arriving[WEIGHTS].wait_verified()
    assert not (location.path / WEIGHTS).exists()


def test_lmi_serve_answers_from_an_s3_artifact_loaded_while_it_streams(published, python, cli_env, s3_env, tmp_path):
    log = tmp_path / "serve.log"
    env = cli_env | s3_env | {"LMI_SERVE_CACHE": str(tmp_path / "serve-cache")}
    with lmi_serve(python, published, env, log, timeout=120) as url:
        reply = httpx.post(f"{url}/invocations", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6}}, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["generated_text"]
    assert re.search(r"downloaded 1 weight files \([\d.]+ GB\) in [\d.]+ s while loading", log.read_text()), log.read_text()[-2000:]
