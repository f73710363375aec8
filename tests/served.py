"""Run `lmi-serve` as a real subprocess on a free 127.0.0.1 port, as a user would."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def lmi_serve(python: str, artifact: str, env: Mapping[str, str], log: Path, timeout: float = 180) -> Iterator[str]:
    """Start `python -m lmi_runtime ARTIFACT`, wait until /ping says 200, yield its URL, stop it."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([python, "-m", "lmi_runtime", artifact, "--host", "127.0.0.1", "--port", str(port)],
                                env=dict(env), stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert proc.poll() is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/ping").status_code == 200:
                        break
                assert time.monotonic() < deadline, "lmi-serve did not become ready:\n" + log.read_text()
                time.sleep(0.25)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
