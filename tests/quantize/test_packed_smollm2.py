"""Issue 12 on the real SmolLM2, quantized by the project's own quantize stage (cached across
runs by `quantized_folder`; the first run quantizes: slow), served on CPU through the forced
packed path: the packed weights are exactly transformers' dequantized ones, and the greedy
output matches the dequantized reference for its first 16 tokens."""

from __future__ import annotations

import pytest
import torch

from lmi_compile.targets.torch_target import local_artifact
from lmi_runtime.backends.loader import load_backend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.engine import LLMEngine
from lmi_runtime.engine.offline import generate
from lmi_runtime.engine.request import SamplingParams
from lmi_runtime.locate import inspect_folder
from test_packed_tiny import check_packed_is_transformers_dequantized

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
LAYERS = {"awq": "int4 g64 ×210", "gptq": "int4 g64 ×210", "static_int8": "int8 ×210",
          "smoothquant": "int8 act-int8 ×210"}


def greedy(backend) -> list[list[int]]:
    prompts = [backend.tokenizer(p)["input_ids"] for p in PROMPTS]
    done = generate(LLMEngine(backend, EngineConfig(max_batch_size=4)), prompts, SamplingParams(max_new_tokens=16))
    return [c.token_ids for c in done]


def served(folder, **settings):
    return load_backend(inspect_folder(folder), EngineConfig(max_batch_size=4, **settings))


@pytest.mark.slow
@pytest.mark.parametrize("method", list(LAYERS))
def test_packed_weights_are_transformers_dequantized_weights(quantized_folder, method):
    check_packed_is_transformers_dequantized(quantized_folder(method), LAYERS[method])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["awq", "gptq", "static_int8"])
def test_weight_only_packed_greedy_matches_the_dequantized_reference(quantized_folder, method):
    """Reference: transformers running the checkpoint dequantized (what lmi-serve served before)."""
    folder = quantized_folder(method)
    packed = served(folder, quantized_kernels="on")
    assert packed.info.details["quantized_layers"] == LAYERS[method]
    tokens = greedy(packed)
    assert all(len(t) == 16 for t in tokens)
    assert tokens == greedy(served(folder, backend="transformers"))
    assert tokens == greedy(served(folder, quantized_kernels="off"))


@pytest.mark.slow
def test_smoothquant_packed_follows_the_calibrated_int8_activations(quantized_folder):
    """W8A8 quantizes each token's activations: rounding amplifies float noise (a 1e-6 relative
    nudge of the embeddings moves transformers' own logits by ~3), so the packed path is held
    to transformers' activation-quantized reference by score, and is closer to it than the
    dense path that drops the activation quantization."""
    folder = quantized_folder("smoothquant")
    backends = {"packed": served(folder, quantized_kernels="on"), "dense": served(folder, quantized_kernels="off"),
                "reference": served(folder, backend="transformers")}
    ids = backends["packed"].tokenizer("The quick brown fox jumps over the lazy dog. Paris is the capital of")["input_ids"]
    scores = {name: b.score(ids) for name, b in backends.items()}
    gap = {name: (scores[name] - scores["reference"]).abs().mean().item() for name in ("packed", "dense")}
    assert gap["packed"] < 0.75 * gap["dense"], gap
    assert torch.equal(scores["packed"].argmax(-1), scores["reference"].argmax(-1))


@pytest.mark.slow
def test_prepacked_awq_artifact_gives_the_same_tokens(quantized_folder, tmp_path):
    folder = quantized_folder("awq")
    artifact = local_artifact(folder, tmp_path / "awq-torch")
    assert greedy(served(artifact, quantized_kernels="on")) == greedy(served(folder, quantized_kernels="on"))


@pytest.mark.slow
@pytest.mark.parametrize("method", list(LAYERS))
def test_served_perplexity_is_the_quantize_reports(quantized_folder, method_spec, method):
    """lmi-serve's packed path scores the quality gate's own evaluation windows within 1% of
    the perplexity the quantize stage reported for the checkpoint (issue 12's bar)."""
    import math

    import torch.nn.functional as F

    from lmi_compile.quantize import QuantReport, corpora, evaluate

    folder = quantized_folder(method)
    quality = method_spec(method).quality
    backend = served(folder, quantized_kernels="on", max_model_len=quality.seq_len)
    texts = corpora.calibration_and_evaluation(method_spec(method).calibration.dataset, quality.dataset)
    windows = evaluate.eval_windows(corpora.token_stream(backend.tokenizer, texts.evaluation), quality.seq_len,
                                    quality.max_tokens)
    nll = sum(F.cross_entropy(backend.score(w)[:-1], torch.tensor(w[1:]), reduction="sum").item() for w in windows)
    served_ppl = math.exp(nll / sum(len(w) - 1 for w in windows))
    reported = QuantReport.load(folder).perplexity.quantized
    assert abs(served_ppl / reported - 1) < 0.01, (served_ppl, reported)
