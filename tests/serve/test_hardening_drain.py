"""SIGTERM (SageMaker's scale-in) drains a real `lmi-serve` process (issue 16): no new
requests, those in flight finish until --drain-seconds, the rest end with a final error event
that says so, and the process exits 0. Its start-up log is quiet and says what it loads.

This test takes ~30 s on 2 CPU cores: it starts a real server and needs requests that outlive
the drain deadline."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time

import httpx

from served import free_port


def _stream(url: str, tokens: int, out: list, index: int) -> None:
    # ignore_eos_token: a long request must still be running at the deadline, not end early by EOS
    body = {"inputs": f"Story number {index}: once upon a time", "stream": True,
            "parameters": {"max_new_tokens": tokens, "ignore_eos_token": True}}
    try:
        with httpx.stream("POST", f"{url}/invocations", json=body, timeout=120) as res:
            lines = [json.loads(line) for line in res.iter_lines() if line.strip()]
        out[index] = ("ok", res.status_code, lines)
    except httpx.HTTPError as err:
        out[index] = ("transport", type(err).__name__, [])


def test_sigterm_drains_then_fails_the_rest_and_exits_0(smollm2_dir, python, cli_env, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    cmd = [python, "-m", "lmi_runtime", str(smollm2_dir), "--host", "127.0.0.1", "--port", str(port),
           "--drain-seconds", "20", "--max-batch-size", "12", "--max-concurrent-requests", "64"]
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=cli_env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/ping").status_code == 200:
                    break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        results: list = [None] * 12
        lengths = [4] * 6 + [3000] * 6  # six finish within the deadline, six cannot
        threads = [threading.Thread(target=_stream, args=(url, n, results, i)) for i, n in enumerate(lengths)]
        for thread in threads:
            thread.start()
        while "lmi_running_batch_size 12" not in httpx.get(f"{url}/metrics").text:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)
        with contextlib.suppress(httpx.TransportError):  # a new request is refused (or the port is closed)
            late = httpx.post(f"{url}/invocations", json={"inputs": "late", "parameters": {"max_new_tokens": 2}})
            assert late.status_code == 503 and "shutting down" in late.json()["error"]
        for thread in threads:
            thread.join(timeout=60)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert time.monotonic() - signalled < 50  # the 20 s deadline, then the final events (a busy CPU adds)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = [r for r in results[:6]]
    for kind, status, lines in finished:  # in flight at SIGTERM, done within the deadline: whole answers
        assert (kind, status) == ("ok", 200) and lines[-1]["details"]["finish_reason"] == "length"
    for kind, status, lines in results[6:]:  # past the deadline: a final event that says why
        assert (kind, status) == ("ok", 200), (kind, status)
        assert lines[-1]["details"]["finish_reason"] == "error" and "drain deadline" in lines[-1]["error"]
        assert 0 < len(lines) - 1 < 3000
    text = log.read_text()
    assert f"loading {smollm2_dir}" in text and "received SIGTERM: draining" in text
    assert "6 request(s) ended with an error event" in text
    assert "Traceback" not in text and "it/s]" not in text and "Warning" not in text
