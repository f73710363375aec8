"""The compiled layer functions (regional `torch.compile`, what a CUDA start runs before it
captures decode graphs) give the eager path's greedy tokens. Checked on the CPU's Inductor, so
that a graph break or a changed signature fails here, not first on a GPU."""

from __future__ import annotations

from lmi_runtime.backends.loader import load_backend
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.engine import LLMEngine
from lmi_runtime.engine.offline import generate
from lmi_runtime.engine.request import SamplingParams
from lmi_runtime.locate import inspect_folder
from tiny_llama import save_tiny_llama


def test_compiled_layers_give_the_eager_tokens(smollm2_dir, tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny", smollm2_dir, hidden=64, intermediate=128, layers=2, heads=4,
                             max_positions=256)
    config = EngineConfig(device="cpu", dtype="float32", max_batch_size=4)
    backend = load_backend(inspect_folder(folder), config)
    backend.info.eos_token_ids = set()
    prompts, params = [[5, 6, 7, 8, 9], [10, 11]], SamplingParams(max_new_tokens=6)
    eager = [c.token_ids for c in generate(LLMEngine(backend, config), prompts, params)]
    backend.model.compile_layers()
    compiled = [c.token_ids for c in generate(LLMEngine(backend, config), prompts, params)]
    assert compiled == eager and all(len(ids) == 6 for ids in eager)
