"""The portable `torch` target: safetensors weights under `rank{r}/`, everything else
(config, tokenizer, quantization report) shared at the root.

With tp_degree 1 the checkpoint is copied as is into `rank0/`, except a quantized
(compressed-tensors) Llama-family checkpoint, whose weights are written already packed in the
runtime kernels' layout (`lmi_runtime.quant.prepacked`), so a start converts nothing; a scheme
the packed layers do not cover is copied as is (said in the log). Above 1 it is pre-split here,
once, following `lmi_runtime.backends.tp_sharding` (the rule the runtime builds each rank's
model by): `rank{r}/model.safetensors` keeps Hugging Face tensor names with sharded shapes,
so each serving rank reads only its own shard.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from lmi_runtime.artifact.manifest import TargetInfo, rank_group
from lmi_runtime.backends.tp_sharding import check_degree, shard_tensor
from lmi_runtime.checksums import progress_bar
from lmi_runtime.errors import ConfigError
from lmi_runtime.quant import prepacked

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


def describe(tp_degree: int, dtype: str, compiled: Path | None = None) -> TargetInfo:
    """What the artifact is tied to: any CPU or CUDA device, these library versions, and the
    layout of pre-packed weights when the compiled folder holds them."""
    layout = prepacked.layout_of(sorted((compiled / rank_group(0)).glob("*.safetensors"))) if compiled else None
    return TargetInfo(
        backend="torch",
        tp_degree=tp_degree,
        dtype=dtype,
        hardware={"kind": "any"},  # safetensors load on CPU and any CUDA device
        toolchain={**toolchain(), **({"weights_layout": layout} if layout else {})},
    )


def build(model_dir: Path, out_dir: Path, *, tp_degree: int, log: Callable[[str], None] = print) -> None:
    """Write `model_dir` into `out_dir` in the per-rank layout."""
    if tp_degree != 1:
        _split(model_dir, out_dir, tp_degree)
        return
    weights = out_dir / rank_group(0)
    weights.mkdir(parents=True, exist_ok=True)
    items = [item for item in sorted(model_dir.iterdir()) if not item.is_dir() and not item.name.startswith(".")]
    if _prepack(model_dir, weights / "model.safetensors", log):
        items = [item for item in items if not (item.name.endswith(WEIGHT_SUFFIXES) or item.name == WEIGHT_INDEX)]
    with progress_bar(f"compile torch: {len(items)} files", sum(item.stat().st_size for item in items)) as advance:
        for item in items:
            is_weight = item.name.endswith(WEIGHT_SUFFIXES) or item.name == WEIGHT_INDEX
            shutil.copy2(item, (weights if is_weight else out_dir) / item.name)
            advance(item.stat().st_size)


def local_artifact(model_dir: Path, out_dir: Path, dtype: str = "float32") -> Path:
    """A one-rank torch artifact with its manifest, outside a recipe run (the benchmarks' and
    tests' starts are from an artifact, as deployed): `build`, then the manifest, which records
    the tokenizer class as the pipeline's fetch stage does."""
    from lmi_runtime.artifact.folder import build_manifest, write_manifest
    from lmi_runtime.artifact.manifest import ModelInfo
    from lmi_runtime.tokenizer import class_to_record, load_tokenizer

    build(model_dir, out_dir, tp_degree=1, log=lambda line: None)
    model = ModelInfo(source=str(model_dir), tokenizer_class=class_to_record(load_tokenizer(model_dir, False)))
    write_manifest(out_dir, build_manifest(out_dir, model=model, target=describe(1, dtype, out_dir)))
    return out_dir


def _prepack(model_dir: Path, dest: Path, log: Callable[[str], None]) -> bool:
    """Write a quantized Llama-family checkpoint's weights packed to `dest`; False (nothing
    written) for any other checkpoint."""
    from lmi_runtime.quant import compressed

    try:
        checkpoint = _packed_checkpoint(model_dir, json.loads((model_dir / "config.json").read_text()))
    except compressed.Unsupported as err:
        log(f"compile torch: weights copied as stored, not pre-packed ({err}); lmi-serve dequantizes them at load")
        return False
    if checkpoint is None:
        return False
    prepacked.save(checkpoint, dest)
    log(f"compile torch: weights pre-packed in layout {prepacked.LAYOUT}: {checkpoint.summary()}")
    return True


def _packed_checkpoint(model_dir: Path, config: dict):
    """The checkpoint's quantized layers read packed; None for a dense checkpoint. Raises
    `compressed.Unsupported` for quantized weights the packed layers do not cover (another
    format, a model outside the Llama family, an uncovered scheme)."""
    quant = config.get("quantization_config")
    if not quant:
        return None
    from lmi_runtime.backends.llama_family import LLAMA_FAMILY
    from lmi_runtime.quant import compressed

    if quant.get("quant_method") != "compressed-tensors" or config.get("model_type") not in LLAMA_FAMILY:
        raise compressed.Unsupported(f"{quant.get('quant_method')} weights of a '{config.get('model_type')}' model")
    return compressed.read(sorted(model_dir.glob("*.safetensors")), quant)


def _split(model_dir: Path, out_dir: Path, tp: int) -> None:
    """One `rank{r}/model.safetensors` per rank; the rest shared. Ranks are written one at a
    time, reading tensors lazily, so memory holds one rank's shard at most."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lmi_runtime.backends.llama_family import LLAMA_FAMILY
    from lmi_runtime.quant import compressed
    from lmi_runtime.quant.sharding import check_shardable

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") not in LLAMA_FAMILY:
        raise ConfigError(f"tensor parallel degree {tp} on the torch target needs a Llama-family model "
                          f"({', '.join(sorted(LLAMA_FAMILY))}); this one is '{config.get('model_type')}'",
                          hint="use tensor_parallel_degree 1, or target.backend trtllm/neuron")
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    check_degree(heads, kv, config["intermediate_size"], tp)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no safetensors weights in {model_dir} to split for tensor parallelism")
    try:
        checkpoint = _packed_checkpoint(model_dir, config)
    except compressed.Unsupported as err:
        raise ConfigError(f"tensor parallel degree {tp}: this quantized checkpoint cannot be split ({err})",
                          hint="use tensor_parallel_degree 1 for it") from err
    if checkpoint is not None:
        check_shardable(checkpoint, tp)  # before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(model_dir.iterdir()):
        if item.is_file() and not item.name.startswith(".") and not item.name.endswith(WEIGHT_SUFFIXES) \
                and item.name != WEIGHT_INDEX:
            shutil.copy2(item, out_dir / item.name)
    if checkpoint is not None:
        _split_packed(checkpoint, out_dir, tp, kv, head_dim)
        return
    for rank in range(tp):
        shard = {}
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    shard[name] = shard_tensor(name, handle.get_tensor(name), rank, tp, kv, head_dim)
        (out_dir / rank_group(rank)).mkdir(exist_ok=True)
        save_file(shard, str(out_dir / rank_group(rank) / "model.safetensors"), metadata={"format": "pt"})


def _split_packed(checkpoint, out_dir: Path, tp: int, num_kv_heads: int, head_dim: int) -> None:
    """Each rank's share of the packed layers, pre-packed like a one-rank artifact."""
    from lmi_runtime.quant.sharding import shard_checkpoint

    for rank in range(tp):
        (out_dir / rank_group(rank)).mkdir(exist_ok=True)
        prepacked.save(shard_checkpoint(checkpoint, rank, tp, num_kv_heads, head_dim),
                       out_dir / rank_group(rank) / "model.safetensors")
