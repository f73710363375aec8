"""The contract between the engine core and a model backend.

The engine owns requests, scheduling, sampling and text; a backend owns the weights, the KV
cache and how a batch is run. The split follows vLLM v1 (scheduler / KV-cache manager / model
runner) so that a paged cache with CUDA graphs, or an engine with its own in-flight batching
(TensorRT-LLM, Neuron), can sit behind the same calls:

- `kv_manager` (`lmi_runtime.engine.kv_cache.KVCacheManager`): the scheduler reserves KV-cache
  room there for a sequence's whole length (prompt + max_new_tokens) before it joins the
  running batch, so a running sequence never runs out mid-way, and frees it when it leaves
  (finished, cancelled or failed);
- `prefill(seqs)` runs the prompts of newly admitted sequences, `decode(seqs)` one step for
  sequences whose last token is not in the cache yet; both return next-token logits, one row
  per sequence. A backend that `decodes_ahead` also takes `decode(seqs, ahead)`: sequences
  whose next input token is still on the device, sampled by the step before (not yet in
  `output_ids`), so the engine queues a step before it reads the last one's tokens.

`prefill_tokens` is the per-step prompt budget the backend prefers when the deployment sets
none (`EngineConfig.max_prefill_tokens`): the engine admits new sequences only while their
prompts fit it (the first always), so a step's prefill stays about one forward long and running
sequences are not held up by a burst of prompts. None: no budget.

Both `prefill` and `decode` must be idempotent for a sequence whose token list did not change
(the engine re-runs sequences one by one after a batch raised, to fail only the culprit), and
must not change the cache's view of a sequence other than writing its own positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from lmi_runtime.engine.kv_cache import KVCacheManager
from lmi_runtime.engine.request import Sequence
from lmi_runtime.engine.sampler import Ahead


@dataclass
class ServedModel:
    """What the engine and the HTTP layer need to know about a loaded model (the manifest's
    `ModelInfo` says instead where an artifact's weights came from)."""

    name: str
    max_model_len: int
    eos_token_ids: set[int]
    vocab_size: int
    details: dict[str, str] = field(default_factory=dict)  # backend, dtype, device, quantization


class Backend(ABC):
    info: ServedModel
    tokenizer: object  # a transformers tokenizer: encode/decode/apply_chat_template
    device: torch.device
    kv_manager: KVCacheManager  # the cache room the scheduler claims and releases
    decodes_ahead: bool = False  # `decode` accepts `ahead` (see the module's docstring)
    prefill_tokens: int | None = None  # the prompt tokens a step should prefill at most (see the module's docstring)

    @abstractmethod
    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        """Run each sequence's uncached tokens; logits of its last token, [len(seqs), vocab]."""

    @abstractmethod
    def decode(self, seqs: list[Sequence], ahead: Ahead | None = None) -> torch.Tensor:
        """One step: feed each sequence's last token (from `ahead` where it is there, only
        when `decodes_ahead`); next-token logits, [len(seqs), vocab]."""

    def score(self, token_ids: list[int]) -> torch.Tensor:
        """Logits of every position of `token_ids` from a cache-free forward, float
        [len(token_ids), vocab] (row i predicts token i+1): prompt log-probs (OpenAI `echo`,
        LMI `decoder_input_details`). Leaves no trace in the cache."""
        raise NotImplementedError(f"{type(self).__name__} cannot score prompts (no prompt log-probs)")

    def fork(self, parent: Sequence, child: Sequence) -> bool:
        """Give `child` (same prompt, just admitted) the cache of `parent`, prefilled in this
        step, so that extra samples of one request (`n`, `best_of`) share one prefill. False:
        not supported, the engine prefills the child itself."""
        return False
