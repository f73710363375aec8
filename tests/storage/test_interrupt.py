"""The S3 server dies in the middle of a publish: a clear error, no manifest, and a re-run
after the restart sends only the files that had not arrived (counted from s5cmd's JSON log
and checked against the server's object mtimes)."""

from __future__ import annotations

import json
import subprocess
import time

import s3server
from lmi_runtime.artifact.download import download_artifact
from lmi_runtime.artifact.folder import read_manifest
from lmi_runtime.artifact.manifest import MANIFEST_NAME
from lmi_runtime.storage.s3 import S3Options

from storage_folders import write_artifact

FILES, SIZE = 8, 6 << 20


def _objects(client, bucket):
    pages = client.list_objects_v2(Bucket=bucket, Prefix="m/")
    return {o["Key"][2:]: o["LastModified"] for o in pages.get("Contents", [])}


def _sent(log):
    return [json.loads(line)["destination"] for line in log.read_text().splitlines() if json.loads(line).get("success")]


def test_publish_resumes_after_the_server_dies(tmp_path, cli_env, python, monkeypatch):
    artifact = write_artifact(tmp_path / "artifact", ranks=1, files_per_rank=FILES, size=SIZE)
    total = len(read_manifest(artifact).all_files())
    server = s3server.S3Server(tmp_path / "s3data")
    with server:
        bucket = server.create_bucket("resume")
        client = server.client(retries=0)
        env = cli_env | server.env() | {"LMI_S3_RETRY_COUNT": "0", "LMI_S3_WORKERS": "1"}
        cmd = [python, "-m", "lmi_compile", "publish", str(artifact), f"s3://{bucket}/m"]

        first_log = tmp_path / "first.jsonl"
        proc = subprocess.Popen(cmd, env=env | {"LMI_S3_TRANSFER_LOG": str(first_log)}, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(_objects(client, bucket)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop(crash=True)
        _, stderr = proc.communicate(timeout=60)
        stderr = " ".join(stderr.split())  # rich wraps lines at the console width
        assert proc.returncode == 2, stderr
        assert "cannot reach the S3 endpoint" in stderr and "hint:" in stderr
        assert "finished files are not sent again" in stderr

        server.start()
        done = _objects(client, bucket)
        assert MANIFEST_NAME not in done  # readers see no artifact, not half of one
        assert 0 < len(done) < total, f"interrupt landed outside the publish: {len(done)} of {total}"

        second_log = tmp_path / "second.jsonl"
        rerun = subprocess.run(cmd, env=env | {"LMI_S3_TRANSFER_LOG": str(second_log)}, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        sent = _sent(second_log)
        assert len(sent) == total - len(done)
        assert not {d.removeprefix(f"s3://{bucket}/m/") for d in sent} & set(done)
        after = _objects(client, bucket)
        assert all(after[key] == stamp for key, stamp in done.items())  # finished files untouched
        assert MANIFEST_NAME in after

        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        options = S3Options(endpoint_url=server.endpoint, retry_count=0)
        assert download_artifact(f"s3://{bucket}/m", tmp_path / "dl", s3_options=options) == read_manifest(artifact)
