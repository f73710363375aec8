"""Input limits at the HTTP layer (issue 16), on the real model served in-process: the body
is capped before parsing (413), deep JSON is refused (400, not a RecursionError 500), request
labels in /metrics come from route templates (unknown paths cannot grow it), and a client
that dribbles its headers is dropped after --header-timeout. Nothing is left running."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from lmi_runtime.errors import ConfigError
from lmi_runtime.server.app import create_app
from lmi_runtime.server.limits import json_depth_exceeds, max_payload_bytes, uvicorn_limits
from lmi_runtime.server.state import ServerState
from served import free_port


def test_body_over_the_cap_is_413_before_parsing(live, client):
    big = b'{"inputs": "' + b"a" * (7 << 20) + b'"}'  # 7 MB > SageMaker's 6 MB default
    res = client.post("/invocations", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and "larger than 6 MB" in res.json()["error"]
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in res.json()["hint"]

    def chunks():  # no Content-Length: counted while read
        for _ in range(8):
            yield b"a" * (1 << 20)

    res = client.post("/invocations", content=chunks(), headers={"content-type": "application/json"})
    assert res.status_code == 413
    ok = client.post("/invocations", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}})
    assert ok.status_code == 200
    assert live.metric("lmi_requests_total", '{path="/invocations",status="413"}') >= 2


def test_payload_cap_follows_the_sagemaker_variable():
    assert max_payload_bytes({}) == 6 << 20
    assert max_payload_bytes({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0.5"}) == 512 << 10
    for bad in ("0", "-1", "nan", "lots"):
        with pytest.raises(ConfigError, match="SAGEMAKER_MAX_PAYLOAD_IN_MB"):
            max_payload_bytes({"SAGEMAKER_MAX_PAYLOAD_IN_MB": bad})


def test_deeply_nested_json_is_400_not_500(live, client):
    deep = b'{"inputs": "x", "parameters": {"stop": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"
    res = client.post("/invocations", content=deep, headers={"content-type": "application/json"})
    assert res.status_code == 400 and "nests deeper than 64 levels" in res.json()["error"]
    res = client.post("/v1/chat/completions", content=b"[" * 50_000, headers={"content-type": "application/json"})
    assert res.status_code == 400
    brackets_in_text = {"inputs": "[" * 150 + "{" * 150, "parameters": {"max_new_tokens": 2}}  # strings do not count
    assert client.post("/invocations", json=brackets_in_text).status_code == 200
    body = b'{"a": "\\"[[[[", "b": [[1]]}'  # depth 3: the brackets in the (escaped) string do not count
    assert not json_depth_exceeds(body, limit=3) and json_depth_exceeds(body, limit=2)


def test_unknown_paths_do_not_grow_metrics(live, client):
    before = len(client.get("/metrics").text)
    for i in range(1000):
        assert client.get(f"/no/such/path/{i}").status_code == 404
    text = client.get("/metrics").text
    assert len(text) - before < 200, "every unknown path made its own series"
    assert 'lmi_requests_total{path="unmatched",status="404"}' in text
    assert "/no/such/path" not in text
    assert live.metric("lmi_running_batch_size") == 0 and live.metric("lmi_queue_depth") == 0


@pytest.fixture()
def slow_header_server():
    import uvicorn

    port = free_port()
    config = uvicorn.Config(create_app(ServerState()), host="127.0.0.1", port=port, log_level="warning", **uvicorn_limits(0.5))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def test_a_client_that_dribbles_its_headers_is_dropped(slow_header_server):
    port = slow_header_server
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        slow.settimeout(5)
        start = time.monotonic()
        assert slow.recv(1024) == b""  # closed by the server
        assert time.monotonic() - start < 3
    with socket.create_connection(("127.0.0.1", port)) as ok:  # a whole request in time is answered
        ok.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        ok.settimeout(5)
        answer = b""
        while not answer.endswith(b"}"):  # headers, then the JSON body
            answer += ok.recv(1024)
        assert answer.startswith(b"HTTP/1.1 503")  # (no model loaded here)
        time.sleep(0.8)  # idle on a kept-alive connection: the next request's deadline applies
        ok.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        assert ok.recv(1024) == b""
    assert httpx.get(f"http://127.0.0.1:{port}/ping").status_code == 503


def test_an_unexpected_error_does_not_break_the_connection_for_the_next_request(live, monkeypatch):
    # A request that fails unexpectedly inside the server (a bug in building the LMI response,
    # planted for one request) must not take its keep-alive connection down with it: the next
    # request reuses it.
    from lmi_runtime.server import lmi

    real, calls = lmi.result_json, []

    async def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("planted bug")
        return await real(*args, **kwargs)

    monkeypatch.setattr(lmi, "result_json", fails_once)
    with httpx.Client(base_url=live.url, timeout=60, limits=httpx.Limits(max_connections=1)) as one:
        odd = one.post("/invocations", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
        assert odd.status_code == 500 and "planted bug" in odd.json()["error"]
        for _ in range(3):
            assert one.post("/invocations", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}}).status_code == 200
