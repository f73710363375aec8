"""The portable `torch` target: safetensors weights under `rank0/`, everything else
(config, tokenizer, quantization report) shared at the root.

The torch runtime serves a single rank today, so tensor parallelism above 1 is refused
with a clear error instead of writing shards nothing can load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmi_runtime.artifact.manifest import TargetInfo, rank_group
from lmi_runtime.checksums import progress_bar
from lmi_runtime.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors",)
WEIGHT_INDEX = "model.safetensors.index.json"


def toolchain() -> dict[str, str]:
    """Versions that decide whether a runtime can load the weights as written."""
    import safetensors
    import torch
    import transformers

    return {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
    }


def describe(tp_degree: int, dtype: str) -> TargetInfo:
    """What the artifact is tied to: any CPU or CUDA device, these library versions."""
    return TargetInfo(
        backend="torch",
        tp_degree=tp_degree,
        dtype=dtype,
        hardware={"kind": "any"},  # safetensors load on CPU and any CUDA device
        toolchain=toolchain(),
    )


def build(model_dir: Path, out_dir: Path, *, tp_degree: int) -> None:
    """Copy `model_dir` into `out_dir` in the per-rank layout."""
    if tp_degree != 1:
        raise ConfigError(
            f"the torch target serves one rank, but tp_degree is {tp_degree}",
            hint="set target.tp_degree: 1 (or TENSOR_PARALLEL_DEGREE=1) for the torch target, "
            "or choose target.backend trtllm/neuron for multi-device serving",
        )
    weights = out_dir / rank_group(0)
    weights.mkdir(parents=True, exist_ok=True)
    items = [item for item in sorted(model_dir.iterdir()) if not item.is_dir() and not item.name.startswith(".")]
    with progress_bar(f"compile torch: {len(items)} files", sum(item.stat().st_size for item in items)) as advance:
        for item in items:
            is_weight = item.name.endswith(WEIGHT_SUFFIXES) or item.name == WEIGHT_INDEX
            shutil.copy2(item, (weights if is_weight else out_dir) / item.name)
            advance(item.stat().st_size)
