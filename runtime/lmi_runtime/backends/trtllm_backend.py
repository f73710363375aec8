"""Serve a `trtllm` artifact through TensorRT-LLM's `LLM` API (1.2). Its in-flight batching
and sampling run the batch; our engine keeps the queue limit, the stop sequences (ours, on the
text), the HTTP API and the metrics. `tensorrt_llm` is imported only here, at load time.

Token streaming: each admitted request runs `LLM.generate_async(prompt_ids, streaming=True)`
on one asyncio loop in a helper thread; the engine thread reads the new tokens from a queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any

from lmi_runtime.backends.vendor import require
from lmi_runtime.engine.backend import ServedModel
from lmi_runtime.engine.request import SamplingParams, Sequence
from lmi_runtime.engine.token_engine import TokenBackend, TokenStep

log = logging.getLogger("lmi_runtime.trtllm")
OPTIONS_FILE = "llm_api_options.json"
POLL_SECONDS = 0.05


def sampling_kwargs(params: SamplingParams, max_new_tokens: int) -> dict[str, Any]:
    """Our request parameters as `tensorrt_llm.SamplingParams` keyword arguments. Greedy is
    top_k=1 (its `_greedy_decoding`); stop strings stay with our engine (they act on text);
    detokenize=False since we detokenize incrementally ourselves."""
    kwargs: dict[str, Any] = {"max_tokens": max_new_tokens, "detokenize": False, "logprobs": 1}
    if params.greedy:
        kwargs["top_k"] = 1
    else:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
        if params.top_k:
            kwargs["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = params.repetition_penalty
    if params.seed is not None:
        kwargs["seed"] = params.seed
    return kwargs


def load_options(root: Path) -> dict[str, Any]:
    return json.loads((root / OPTIONS_FILE).read_text())


class TrtllmBackend(TokenBackend):
    def __init__(self, llm, sampling_cls, tokenizer, info: ServedModel, max_seq_len: int):
        self.llm, self._sampling_cls, self.tokenizer, self.info = llm, sampling_cls, tokenizer, info
        self._max_seq_len = max_seq_len
        self._events: queue.Queue[tuple[int, list[int], list[float], bool]] = queue.Queue()
        self._results: dict[int, Any] = {}
        self._seqs: dict[int, Sequence] = {}
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="lmi-trtllm", daemon=True).start()

    def max_reservable_tokens(self) -> int:
        return self._max_seq_len

    def reserve(self, seq: Sequence) -> bool:
        return seq.total_tokens <= self._max_seq_len  # the KV blocks are TensorRT-LLM's to schedule

    def start(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self._seqs[seq.seq_id] = seq
            sp = self._sampling_cls(**sampling_kwargs(seq.params, seq.max_new_tokens))
            asyncio.run_coroutine_threadsafe(self._stream(seq.seq_id, list(seq.prompt_ids), sp), self._loop)

    async def _stream(self, seq_id: int, prompt: list[int], sp) -> None:
        seen = 0
        try:
            result = self.llm.generate_async(prompt, sampling_params=sp, streaming=True)
            self._results[seq_id] = result
            async for out in result:
                completion = out.outputs[0]
                tokens = list(completion.token_ids[seen:])
                logprobs = _logprobs(completion.logprobs, tokens, seen)
                seen += len(tokens)
                self._events.put((seq_id, tokens, logprobs, bool(out.finished)))
        except Exception:  # noqa: BLE001 - end this request, keep serving
            log.exception("TensorRT-LLM request %d failed", seq_id)
            self._events.put((seq_id, [], [], True))

    def poll(self, running: list[Sequence]) -> list[TokenStep]:
        steps: list[TokenStep] = []
        try:
            item = self._events.get(timeout=POLL_SECONDS)
        except queue.Empty:
            return steps
        while True:
            seq_id, tokens, logprobs, done = item
            seq = self._seqs.get(seq_id)
            if seq is not None:
                steps += [TokenStep(seq, t, lp, False) for t, lp in zip(tokens, logprobs)]
                if done:
                    steps.append(TokenStep(seq, None, 0.0, True))
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return steps

    def free(self, seq: Sequence) -> None:
        self._seqs.pop(seq.seq_id, None)
        result = self._results.pop(seq.seq_id, None)
        if result is not None and not result.finished:
            result.abort()


def _logprobs(values, tokens: list[int], seen: int) -> list[float]:
    """TensorRT-LLM gives a float per token, or a {token_id: Logprob} dict per token."""
    if not values:
        return [0.0] * len(tokens)
    out = []
    for token, value in zip(tokens, values[seen:seen + len(tokens)]):
        if isinstance(value, dict):
            value = value.get(token)
            value = getattr(value, "logprob", value)
        out.append(float(value) if value is not None else 0.0)
    return out


def load_trtllm(root: Path, name: str, eos: set[int]) -> TrtllmBackend:
    trtllm = require("tensorrt_llm", "trtllm", "serving a trtllm artifact")
    from transformers import AutoTokenizer

    options = load_options(root)
    if (root / "engine").is_dir():
        from tensorrt_llm._tensorrt_engine import LLM as EngineLLM  # the 1.2 line's engine runner

        llm = EngineLLM(model=str(root / "engine"), tokenizer=str(root / "tokenizer"), **options)
        tokenizer_dir = root / "tokenizer"
        max_len = json.loads((root / "engine" / "config.json").read_text())["build_config"]["max_seq_len"]
    else:
        llm = trtllm.LLM(model=str(root / "checkpoint"), **options)
        tokenizer_dir = root / "checkpoint"
        max_len = options["max_seq_len"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, clean_up_tokenization_spaces=False)
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    info = ServedModel(name, max_len, eos or {tokenizer.eos_token_id}, vocab,
                     {"backend": "trtllm", "tensorrt_llm": trtllm.__version__,
                      "tensor_parallel": str(options.get("tensor_parallel_size", 1))})
    return TrtllmBackend(llm, trtllm.SamplingParams, tokenizer, info, max_len)
