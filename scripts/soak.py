"""A bounded load + fault run against a local lmi-serve (loopback only).

N concurrent clients send a mix of valid requests (non-streaming and streaming, greedy, each
prompt carrying a unique nonce and asking for `return_full_text`, so an answer given to the
wrong request is caught), invalid ones (malformed or over-deep JSON, oversized bodies, unknown
or out-of-range parameters), a request built to fail in the sampler every K-th request, and
random disconnects. It reports requests lost (a valid request without a complete answer), mixed
up (an answer that is not its own), stuck (no answer within --request-timeout, or a running
batch / queue that does not drain to 0 afterwards), whether every 503 was immediate, how each
class of bad request was answered, latency p50/p99 and the server's RSS growth; it exits 1 on
any loss, mix-up or stuck request.

    python scripts/soak.py --artifact artifacts/smollm2-int8 --concurrency 200 --requests 200 \\
        --max-batch-size 8 --max-concurrent-requests 64 --bad-fraction 0.1 --disconnect-fraction 0.1
    python scripts/soak.py --artifact artifacts/smollm2-int8 --concurrency 16 --duration 180   # RSS soak
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WORDS = "river stone lamp garden winter violin harbor pepper candle mirror forest ladder".split()

# Invalid requests: (class, body bytes or callable producing them, headers). A correct server
# answers each with a 4xx, immediately.
BAD: list[tuple[str, bytes]] = [
    ("malformed-json", b'{"inputs": "x", "parameters": {'),
    ("not-an-object", b'["inputs"]'),
    ("unknown-parameter", json.dumps({"inputs": "x", "parameters": {"max_new_tokens": 4, "frobnicate": 1}}).encode()),
    ("negative-max-new-tokens", json.dumps({"inputs": "x", "parameters": {"max_new_tokens": -5}}).encode()),
    ("deep-json", b'{"inputs": "x", "parameters": {"stop": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"),
    ("oversized-body", b'{"inputs": "' + b"a" * (7 << 20) + b'"}'),
    ("prompt-plus-output-too-long", json.dumps({"inputs": "word " * 3000, "parameters": {"max_new_tokens": 4000}}).encode()),
    # (a seed beyond 64 bits is valid: taken modulo 2^64, as the README says)
    ("seed-not-an-integer", json.dumps({"inputs": "x", "parameters": {"do_sample": True, "seed": 1.5, "max_new_tokens": 2}}).encode()),
    ("temperature-infinity", b'{"inputs": "x", "parameters": {"do_sample": true, "temperature": Infinity, "max_new_tokens": 2}}'),
]
FAILING = {"parameters": {"repetition_penalty": 1e-300, "max_new_tokens": 4}}  # the sampler failure


@dataclass
class Tally:
    sent: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)  # valid-request outcomes
    bad_answers: dict[str, Counter] = field(default_factory=dict)  # bad class -> status counts
    failing_answers: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # valid, answered
    slow_503: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def loopback_url(url: str) -> str:
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise SystemExit(f"soak.py only talks to a local server (127.0.0.1), not {host}")
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else None


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else -1


async def valid_request(client: httpx.AsyncClient, index: int, rng: random.Random, tally: Tally,
                        args: argparse.Namespace) -> None:
    nonce = f"[{index}-{rng.randrange(10**9)}]"
    prompt = f"Request {nonce}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
    stream = rng.random() < 0.5
    body = {"inputs": prompt, "stream": stream,
            "parameters": {"max_new_tokens": rng.randint(4, args.max_new_tokens), "return_full_text": True}}
    disconnect = rng.random() < args.disconnect_fraction
    kind = "stream" if stream else "plain"
    tally.sent[f"valid-{kind}" + ("-disconnect" if disconnect else "")] += 1
    start = time.monotonic()
    try:
        if disconnect:  # leave early: after the first token, or after a random short wait
            await asyncio.wait_for(_first_line_or_answer(client, body), timeout=rng.uniform(0.05, 1.0))
            tally.outcomes["disconnect-after-answer"] += 1  # answered before we left: fine either way
            return
        if stream:
            status, lines = await _stream(client, body, args.request_timeout)
            elapsed = time.monotonic() - start
            if status == 200:
                final = lines[-1] if lines else {}
                text = "".join(line["token"]["text"] for line in lines if line.get("token"))
                if "generated_text" not in final or final.get("details", {}).get("finish_reason") == "error":
                    return _lost(tally, f"stream {nonce}: no final event or an error: {str(final)[:200]}")
                if not final["generated_text"].startswith(prompt) or not final["generated_text"].endswith(text):
                    tally.outcomes["mixed"] += 1
                    tally.problems.append(f"mixed stream {nonce}: {final['generated_text'][:120]!r}")
                    return
            return _answered(tally, status, elapsed, nonce)
        res = await client.post("/invocations", json=body, timeout=args.request_timeout)
        elapsed = time.monotonic() - start
        if res.status_code == 200:
            text = res.json().get("generated_text", "")
            if not text.startswith(prompt):
                tally.outcomes["mixed"] += 1
                tally.problems.append(f"mixed {nonce}: {text[:120]!r}")
                return
        _answered(tally, res.status_code, elapsed, nonce, res.text)
    except asyncio.TimeoutError:
        tally.outcomes["disconnected"] += 1  # we left on purpose
    except httpx.TimeoutException:
        tally.outcomes["stuck"] += 1
        tally.problems.append(f"stuck {nonce}: no answer in {args.request_timeout} s")
    except httpx.HTTPError as err:
        _lost(tally, f"{nonce}: {type(err).__name__}: {err}")


def _answered(tally: Tally, status: int, elapsed: float, nonce: str, text: str = "") -> None:
    if status == 200:
        tally.outcomes["ok"] += 1
        tally.latencies.append(elapsed)
    elif status == 503:
        tally.outcomes["503"] += 1
        if elapsed > 1.0:
            tally.slow_503.append(elapsed)
    else:
        _lost(tally, f"{nonce}: HTTP {status} for a valid request: {text[:200]}")


def _lost(tally: Tally, why: str) -> None:
    tally.outcomes["lost"] += 1
    tally.problems.append("lost " + why)


async def _stream(client: httpx.AsyncClient, body: dict, timeout: float) -> tuple[int, list[dict]]:
    async with client.stream("POST", "/invocations", json=body, timeout=timeout) as res:
        if res.status_code != 200:
            await res.aread()
            return res.status_code, []
        return 200, [json.loads(line) async for line in res.aiter_lines() if line.strip()]


async def _first_line_or_answer(client: httpx.AsyncClient, body: dict) -> None:
    async with client.stream("POST", "/invocations", json=body) as res:
        async for _ in res.aiter_lines():
            return


async def bad_request(client: httpx.AsyncClient, rng: random.Random, tally: Tally, args) -> None:
    name, body = rng.choice(BAD)
    tally.sent[f"bad-{name}"] += 1
    try:
        res = await client.post("/invocations", content=body, headers={"content-type": "application/json"},
                                timeout=args.request_timeout)
        tally.bad_answers.setdefault(name, Counter())[str(res.status_code)] += 1
    except httpx.HTTPError as err:
        tally.bad_answers.setdefault(name, Counter())[type(err).__name__] += 1


async def failing_request(client: httpx.AsyncClient, tally: Tally, args) -> None:
    tally.sent["failing"] += 1
    try:
        res = await client.post("/invocations", json={"inputs": "This one fails:", **FAILING}, timeout=args.request_timeout)
        tally.failing_answers[str(res.status_code)] += 1
    except httpx.HTTPError as err:
        tally.failing_answers[type(err).__name__] += 1


async def run_load(url: str, args: argparse.Namespace, pid: int | None) -> Tally:
    tally, rng = Tally(), random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    deadline = time.monotonic() + args.duration if args.duration else None
    counter = iter(range(10**9))
    rss: dict[str, float | None] = {}

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.request_timeout) as client:
        async def worker(seed: int) -> None:
            own = random.Random(seed)
            while True:
                index = next(counter)
                if index >= args.requests or (deadline and time.monotonic() > deadline):
                    return
                if args.fail_every and index % args.fail_every == args.fail_every - 1:
                    await failing_request(client, tally, args)
                elif own.random() < args.bad_fraction:
                    await bad_request(client, own, tally, args)
                else:
                    await valid_request(client, index, own, tally, args)
                if index == args.concurrency:
                    rss["warm"] = rss_mib(pid)  # after the first wave: allocator and caches warm

        started = time.monotonic()
        await asyncio.gather(*(worker(rng.randrange(10**9)) for _ in range(args.concurrency)))
        tally.sent["seconds"] = round(time.monotonic() - started)
        drained_by = time.monotonic() + 10
        while True:  # nothing may stay running or queued
            text = (await client.get("/metrics")).text
            running, waiting = metric(text, "lmi_running_batch_size"), metric(text, "lmi_queue_depth")
            if running == 0 and waiting == 0:
                break
            if time.monotonic() > drained_by:
                tally.outcomes["stuck"] += int(running + waiting)
                tally.problems.append(f"after the run: running batch {running}, queue {waiting} (not 0 after 10 s)")
                break
            await asyncio.sleep(0.2)
    rss["end"] = rss_mib(pid)
    tally.rss = rss  # type: ignore[attr-defined]
    return tally


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = Path(args.log or f"/tmp/soak-lmi-serve-{port}.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "runtime"), str(REPO / "compile"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "lmi_runtime", args.artifact, "--host", "127.0.0.1", "--port", str(port),
           "--max-batch-size", str(args.max_batch_size), "--max-concurrent-requests", str(args.max_concurrent_requests),
           "--log-level", "warning"]
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"lmi-serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ping").status_code == 200:
                return proc, url, log
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("lmi-serve did not become ready in 300 s")
        time.sleep(0.25)


def report(tally: Tally, args) -> int:
    lat = sorted(tally.latencies)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan"))
    rss = getattr(tally, "rss", {})
    lost, mixed, stuck = tally.outcomes["lost"], tally.outcomes["mixed"], tally.outcomes["stuck"]
    print(f"sent: {dict(tally.sent)}")
    print(f"valid outcomes: {dict(tally.outcomes)}")
    print(f"lost {lost}, mixed {mixed}, stuck {stuck}; 503s slower than 1 s: {len(tally.slow_503)}"
          + (f" (max {max(tally.slow_503):.2f} s)" if tally.slow_503 else ""))
    print(f"latency of answered valid requests: p50 {pct(0.5):.2f} s, p99 {pct(0.99):.2f} s, n={len(lat)}"
          + (f", mean {statistics.mean(lat):.2f} s" if lat else ""))
    for name, answers in sorted(tally.bad_answers.items()):
        ok = all(k.isdigit() and 400 <= int(k) < 500 for k in answers)
        print(f"bad {name}: {dict(answers)}" + ("" if ok else "   <-- not a 4xx"))
    if tally.failing_answers:
        print(f"failing request (repetition_penalty 1e-300): {dict(tally.failing_answers)}")
    if rss.get("warm") and rss.get("end"):
        growth = (rss["end"] - rss["warm"]) / rss["warm"]
        print(f"server RSS: {rss['warm']:.0f} MiB after warm-up → {rss['end']:.0f} MiB at the end ({growth:+.1%})")
    for line in tally.problems[:20]:
        print("  " + line)
    return 1 if lost or mixed or stuck else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--artifact", help="start lmi-serve on this model folder / artifact (127.0.0.1, a free port)")
    where.add_argument("--url", help="an lmi-serve already running on loopback, e.g. http://127.0.0.1:8080")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid, for RSS")
    parser.add_argument("--concurrency", type=int, default=200, choices=range(1, 2001), metavar="1..2000")
    parser.add_argument("--requests", type=int, default=200, choices=range(1, 1_000_001), metavar="1..1000000")
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (at most 3600)")
    parser.add_argument("--bad-fraction", type=float, default=0.1)
    parser.add_argument("--disconnect-fraction", type=float, default=0.1)
    parser.add_argument("--fail-every", type=int, default=25, help="every K-th request fails in the sampler (0: none)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-concurrent-requests", type=int, default=64)
    parser.add_argument("--request-timeout", type=float, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log", help="lmi-serve's log file (with --artifact)")
    args = parser.parse_args()
    if not 0 <= args.duration <= 3600 or not 0 <= args.bad_fraction <= 1 or not 0 <= args.disconnect_fraction <= 1:
        parser.error("--duration is 0..3600 s; fractions are 0..1")
    if args.duration:
        args.requests = 1_000_000  # bounded by time instead
    proc, log = None, None
    if args.artifact:
        proc, url, log = start_server(args)
        pid = proc.pid
    else:
        url, pid = loopback_url(args.url), args.pid
    try:
        tally = asyncio.run(run_load(url, args, pid))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
            print(f"lmi-serve exit code after SIGTERM: {code} (log: {log})")
    sys.exit(report(tally, args))


if __name__ == "__main__":
    main()
