"""Fixtures for the serving tests: the real SmolLM2 loaded once, served in-process by uvicorn
on a free 127.0.0.1 port, and transformers' own model as the reference."""

from __future__ import annotations

import functools
import re
import threading
import time
from typing import Iterator

import httpx
import pytest
import torch

from lmi_runtime.backends.loader import load_backend
from lmi_runtime.backends.paged_cache import PagedKVCache
from lmi_runtime.backends.torch_llama import TorchLlamaBackend
from lmi_runtime.engine.backend import Backend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.kv_cache import BlockKVCacheManager
from lmi_runtime.locate import inspect_folder
from lmi_runtime.server.app import create_app
from lmi_runtime.server.loading import start_engine
from lmi_runtime.server.state import ServerState
from served import free_port

BATCH = 8


class LiveServer:
    """uvicorn running a ServerState's app in a thread."""

    def __init__(self, state: ServerState):
        import uvicorn

        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        if self.state.engine is not None:
            self.state.engine.shutdown()

    def metric(self, name: str, labels: str = "", default: float | None = None) -> float:
        text = httpx.get(f"{self.url}/metrics").text
        match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
        if match is None and default is not None:
            return default
        assert match, f"{name}{labels} not in /metrics"
        return float(match.group(1))


@pytest.fixture(scope="session")
def backend(smollm2_dir) -> TorchLlamaBackend:
    return load_backend(inspect_folder(smollm2_dir), EngineConfig(max_batch_size=BATCH))  # type: ignore[return-value]


def sibling_backend(backend: TorchLlamaBackend, max_batch_size: int) -> Backend:
    """Another backend over the same weights with its own KV cache (for a second engine)."""
    kv = backend.kv
    args = backend.model.args
    own = PagedKVCache(args.num_layers, args.num_kv_heads, args.head_dim,
                       BlockKVCacheManager(max_batch_size * 64 + 1, kv.block_size), kv.pool.dtype, kv.pool.device)
    return TorchLlamaBackend(backend.model, backend.tokenizer, backend.info, own)


class FlakyBackend:
    """The real backend, but a decode batch holding the poisoned sequence (once it has two
    tokens) raises, like a kernel crashing on one request's input mid-generation."""

    def __init__(self, inner, poison: int):
        self.inner, self.poison = inner, poison

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _check(self, seqs):
        if any(s.prompt_ids[-1] == self.poison for s in seqs):
            raise RuntimeError("kernel failure")

    def prefill(self, seqs):
        return self.inner.prefill(seqs)

    def decode(self, seqs, ahead=None):
        ahead = ahead or {}  # a token sampled ahead counts as generated
        self._check([s for s in seqs if len(s.output_ids) + (s.seq_id in ahead) >= 2])  # fails later, mid-decode
        return self.inner.decode(seqs, ahead)


@pytest.fixture(scope="session")
def live(backend) -> Iterator[LiveServer]:
    state = ServerState()
    start_engine(state, backend, EngineConfig(max_batch_size=BATCH, max_queue=1000))
    with LiveServer(state) as server:
        yield server


@pytest.fixture()
def client(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def hf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def reference(hf_model, backend):
    """`reference(prompt, n)` → transformers' greedy token ids for the prompt."""

    @functools.lru_cache(maxsize=None)
    def greedy(prompt: str, n: int) -> tuple[int, ...]:
        ids = backend.tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = hf_model.generate(ids, max_new_tokens=n, do_sample=False)
        return tuple(out[0, ids.shape[1]:].tolist())

    def many(prompts: list[str], n: int) -> list[tuple[int, ...]]:
        """Batched: prompts of equal token length run in one `generate` call (no padding)."""
        encoded = [backend.tokenizer(p)["input_ids"] for p in prompts]
        groups: dict[int, list[int]] = {}
        for index, ids in enumerate(encoded):
            groups.setdefault(len(ids), []).append(index)
        out: list[tuple[int, ...]] = [()] * len(prompts)
        for length, members in groups.items():
            batch = torch.tensor([encoded[i] for i in members])
            with torch.inference_mode():
                generated = hf_model.generate(batch, attention_mask=torch.ones_like(batch),
                                              max_new_tokens=n, do_sample=False)
            for row, index in enumerate(members):
                tokens = generated[row, length:].tolist()
                eos = backend.info.eos_token_ids
                cut = next((k + 1 for k, t in enumerate(tokens) if t in eos), len(tokens))
                out[index] = tuple(tokens[:cut])
        return out

    greedy.many = many
    return greedy
