"""Serve a `neuron` artifact with optimum-neuron 0.4.5's NeuronModelForCausalLM, driven by our
scheduler: each running sequence owns one of the compiled batch's slots (its `seq_ids` entry),
prompts run through the context-encoding graph and every step through the token-generation
graph, both with on-device sampling as optimum-neuron compiles its decoders (top-k, top-p,
temperature per sequence; no repetition penalty, no per-request seed, no log-probs there:
requests that ask for them are served without, and the model details say so). A model
compiled without on-device sampling returns logits, and our sampler picks.

`/opt/ml/model` is read-only on SageMaker, and the Neuron runtime writes to its compile cache,
so the artifact's `neuron-cache/` is copied to a writable folder and NEURON_COMPILE_CACHE_URL
points there before optimum-neuron is imported.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from lmi_runtime.backends.vendor import require
from lmi_runtime.engine.backend import ServedModel
from lmi_runtime.engine.request import SamplingParams, Sequence
from lmi_runtime.engine.sampler import sample
from lmi_runtime.engine.token_engine import TokenBackend, TokenStep

EXPORT_DIR, CACHE_DIR = "neuron", "neuron-cache"


def writable_cache(root: Path, scratch: Path) -> Path:
    """A writable copy of the artifact's compile cache (reused when already there)."""
    target = scratch / "neuron-cache"
    if not target.is_dir() and (root / CACHE_DIR).is_dir():
        shutil.copytree(root / CACHE_DIR, target)
    target.mkdir(parents=True, exist_ok=True)
    return target


def sampling_row(params: SamplingParams, max_topk: int) -> list[float]:
    """[top_k, top_p, temperature] as the on-device sampler takes them; greedy is top_k=1."""
    if params.greedy:
        return [1.0, 1.0, 1.0]
    top_k = min(params.top_k, max_topk) if params.top_k else max_topk
    return [float(top_k), params.top_p, params.temperature]


class NeuronBackend(TokenBackend):
    def __init__(self, model, tokenizer, info: ServedModel):
        self.model, self.tokenizer, self.info = model, tokenizer, info
        config = model.neuron_config
        self._free_slots = list(range(config.batch_size))
        self._slot: dict[int, int] = {}
        self._max_topk = config.max_topk
        self._length = config.sequence_length
        self._pending: list[TokenStep] = []

    def max_reservable_tokens(self) -> int:
        return self._length

    def reserve(self, seq: Sequence) -> bool:
        if seq.total_tokens > self._length or not self._free_slots:
            return False
        self._slot[seq.seq_id] = self._free_slots.pop(0)
        return True

    def start(self, seqs: list[Sequence]) -> None:
        # optimum-neuron runs the context-encoding graph for inputs wider than one token whose
        # smallest position is 0: a one-token prompt is padded to two so it is encoded, not decoded
        width = max(2, *(len(s.prompt_ids) for s in seqs))
        ids = [s.prompt_ids + [0] * (width - len(s.prompt_ids)) for s in seqs]
        positions = [list(range(len(s.prompt_ids))) + [0] * (width - len(s.prompt_ids)) for s in seqs]
        self._pending += self._run(seqs, ids, positions)

    def poll(self, running: list[Sequence]) -> list[TokenStep]:
        steps, self._pending = self._pending, []
        started = {s.seq.seq_id for s in steps}
        decoding = [s for s in running if s.seq_id not in started and s.output_ids]
        if decoding:
            steps += self._run(decoding, [[s.token_ids[-1]] for s in decoding],
                               [[len(s.token_ids) - 1] for s in decoding])
        return steps

    def _run(self, seqs: list[Sequence], ids: list[list[int]], positions: list[list[int]]) -> list[TokenStep]:
        order = sorted(range(len(seqs)), key=lambda i: self._slot[seqs[i].seq_id])  # slots in ascending order
        seqs = [seqs[i] for i in order]
        with torch.inference_mode():
            output = self.model(
                torch.tensor([ids[i] for i in order]),
                position_ids=torch.tensor([positions[i] for i in order]),
                seq_ids=torch.tensor([self._slot[s.seq_id] for s in seqs]),
                sampling_params=torch.tensor([sampling_row(s.params, self._max_topk) for s in seqs]),
            )
        if self.model.neuron_config.on_device_sampling:
            return [TokenStep(s, int(t), 0.0, False) for s, t in zip(seqs, output.reshape(-1).tolist())]
        # a model compiled without on-device sampling returns logits: our sampler picks
        picks = sample(output[:, -1, :].float(), seqs, {s.seq_id: None for s in seqs}).picks()
        return [TokenStep(s, p.token, p.log_prob, False) for s, p in zip(seqs, picks)]

    def free(self, seq: Sequence) -> None:
        slot = self._slot.pop(seq.seq_id, None)
        if slot is not None:
            self._free_slots.append(slot)


def load_neuron(root: Path, name: str, eos: set[int], scratch: Path) -> NeuronBackend:
    os.environ["NEURON_COMPILE_CACHE_URL"] = str(writable_cache(root, scratch))
    neuron = require("optimum.neuron", "neuron", "serving a neuron artifact")
    from transformers import AutoTokenizer

    folder = root / EXPORT_DIR
    model = neuron.NeuronModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, clean_up_tokenization_spaces=False)
    config = json.loads((folder / "config.json").read_text())
    info = ServedModel(name, model.neuron_config.sequence_length, eos or {tokenizer.eos_token_id},
                     config["vocab_size"],
                     {"backend": "neuron", "batch_size": str(model.neuron_config.batch_size),
                      "tensor_parallel": str(model.neuron_config.tp_degree),
                      "unsupported": "repetition_penalty, seed, log_prob (on-device sampling)"})
    return NeuronBackend(model, tokenizer, info)
