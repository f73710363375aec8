"""Load a model folder into a backend: the compact torch model for the Llama family, the
transformers implementation for everything else (or when asked for).

Quantized checkpoints in compressed-tensors format (what `lmi-compile quantize` writes) are
dequantized on load through transformers + compressed-tensors (`run_compressed=False`) and
served as dense weights: they load and give the quantized model's outputs, without its memory
or speed gains. Quantized kernels are later work.
"""

from __future__ import annotations

import json
import logging
import math

import torch
from safetensors.torch import load_file

from lmi_runtime.backends.llama_model import LlamaArgs, LlamaForCausalLM, UnsupportedArchitecture
from lmi_runtime.backends.paged_cache import PagedKVCache
from lmi_runtime.backends.tensor_parallel import Leader, RankGroup, artifact_degree, join
from lmi_runtime.backends.tp_sharding import shard_args
from lmi_runtime.engine.backend import Backend, ServedModel
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.kv_cache import BlockKVCacheManager
from lmi_runtime.errors import ConfigError, ModelFolderError
from lmi_runtime.kv_bytes import kv_bytes_per_token
from lmi_runtime.locate import ModelFiles

from lmi_runtime.backends.torch_llama import PREFILL_CHUNK

log = logging.getLogger("lmi_runtime.loader")
DEFAULT_MAX_LEN = 4096
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device '{name}'", hint="use auto, cpu, cuda or cuda:N") from err


def resolve_dtype(name: str, hf_config: dict, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cpu":
            return torch.float32  # half precision matmuls are slow or missing on many CPUs
        name = str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "float16")
    if name not in DTYPES:
        raise ConfigError(f"unsupported dtype '{name}'", hint=f"use one of: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _eos_ids(files: ModelFiles, hf_config: dict, tokenizer) -> set[int]:
    gen_path = files.root / "generation_config.json"
    value = json.loads(gen_path.read_text()).get("eos_token_id") if gen_path.is_file() else None
    if value is None:
        value = hf_config.get("eos_token_id", tokenizer.eos_token_id)
    return set(value if isinstance(value, list) else [value]) - {None}


def _is_compressed(hf_config: dict) -> bool:
    quant = hf_config.get("quantization_config") or {}
    return quant.get("quant_method") == "compressed-tensors"


def _hf_model(files: ModelFiles, config: EngineConfig, dtype: torch.dtype, hf_config: dict):
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    if _is_compressed(hf_config):
        from transformers import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
    with files.hf_folder() as folder:
        return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def _state_dict(files: ModelFiles, config: EngineConfig, dtype: torch.dtype, hf_config: dict) -> dict:
    if hf_config.get("quantization_config") and not _is_compressed(hf_config):
        method = hf_config["quantization_config"].get("quant_method")
        raise ModelFolderError(
            f"quantization method '{method}' is not supported by the torch backend",
            hint="quantize to compressed-tensors with lmi-compile, or use --backend transformers",
        )
    if _is_compressed(hf_config):
        return _hf_model(files, config, dtype, hf_config).state_dict()
    state: dict = {}
    for path in files.weights:
        state.update(load_file(str(path)))
    return state


def _build_llama(args: LlamaArgs, state: dict, dtype: torch.dtype, device: torch.device,
                 max_len: int) -> LlamaForCausalLM:
    with torch.device("meta"):
        model = LlamaForCausalLM(args)
    wanted = {k for k in model.state_dict() if not (k == "lm_head.weight" and args.tie_word_embeddings)}
    missing = sorted(wanted - state.keys())
    if missing:
        raise ModelFolderError(
            f"the checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}",
            hint="check that the weights match config.json",
        )
    weights = {k: state[k].to(dtype) for k in wanted}
    model.load_state_dict(weights, strict=False, assign=True)
    model.tie_weights()
    model.prepare(max_len, device, dtype)
    return model.to(device).eval()


def load_backend(files: ModelFiles, config: EngineConfig, rank: int = 0) -> Backend:
    """`rank` > 0: a tensor-parallel worker (`files` then holds that rank's shard)."""
    from transformers import AutoTokenizer

    hf_config = json.loads((files.root / "config.json").read_text())
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, hf_config, device)
    tokenizer = AutoTokenizer.from_pretrained(
        files.root, trust_remote_code=config.trust_remote_code, clean_up_tokenization_spaces=False
    )
    limit = hf_config.get("max_position_embeddings") or DEFAULT_MAX_LEN
    max_len = config.max_model_len or min(limit, DEFAULT_MAX_LEN)
    if max_len > limit:
        raise ConfigError(f"max_model_len {max_len} exceeds the model's max_position_embeddings {limit}")
    name = config.served_model_name or files.root.name
    quant = (hf_config.get("quantization_config") or {}).get("quant_method", "none")
    details = {"dtype": str(dtype).removeprefix("torch."), "device": str(device), "quantization": quant}

    args = None
    if config.backend != "transformers":
        try:
            args = LlamaArgs.from_hf(hf_config)
        except UnsupportedArchitecture as err:
            if config.backend == "torch":
                raise ModelFolderError(str(err), hint="use --backend transformers (or auto)") from err
            log.info("%s; using the transformers backend", err)
    if args is None:
        from lmi_runtime.backends.hf_backend import TransformersBackend

        if artifact_degree(files) > 1:
            raise ModelFolderError(f"this artifact is split for tensor parallel degree {artifact_degree(files)}; "
                                   "only the torch backend (Llama family) runs several ranks",
                                   hint="use --backend torch (or auto)")

        model = _hf_model(files, config, dtype, hf_config).to(device)
        info = ServedModel(name, max_len, _eos_ids(files, hf_config, tokenizer), hf_config["vocab_size"],
                         {**details, "backend": "transformers"})
        return TransformersBackend(model, tokenizer, info, device)

    if args.sliding_window:
        max_len = min(max_len, args.sliding_window)  # exact attention within the window
    group = join(files, config, rank, device)  # None: one rank
    if group is not None:
        device, args = group.device, shard_args(args, group.world)
        details["tensor_parallel_degree"] = str(group.world)
    state = _state_dict(files, config, dtype, hf_config)
    log.info("rank %d read %d bytes of weights from %s", rank, sum(p.stat().st_size for p in files.weights),
             ", ".join(p.relative_to(files.root).as_posix() for p in files.weights))
    model = _build_llama(args, state, dtype, device, max_len)
    if group is not None:
        model.all_reduce = group.all_reduce
    kv = _kv_cache(args, config, dtype, device, max_len, group)
    info = ServedModel(name, max_len, _eos_ids(files, hf_config, tokenizer), args.vocab_size,
                     {**details, "backend": "torch", "kv_cache_tokens": str(kv.blocks.capacity_tokens)})
    backend = _torch_backend(model, tokenizer, info, kv, config)
    if group is not None and rank == 0:
        backend.tp = Leader(group)
    return backend


def _torch_backend(model: LlamaForCausalLM, tokenizer, info: ServedModel, kv: PagedKVCache,
                   config: EngineConfig) -> Backend:
    """The compact model's backend; on CUDA with compiled layers and decode graphs unless
    `enforce_eager`."""
    from lmi_runtime.backends.decode_graphs import DecodeGraphs
    from lmi_runtime.backends.torch_llama import TorchLlamaBackend

    backend = TorchLlamaBackend(model, tokenizer, info, kv)
    if kv.pool.device.type == "cuda" and not config.enforce_eager:
        model.compile_layers()
        backend.graphs = DecodeGraphs(backend, config.max_batch_size)
        backend.graphs.capture(backend)
    info.details["cuda_graphs"] = str(backend.graphs is not None).lower()
    return backend


def _kv_cache(args: LlamaArgs, config: EngineConfig, dtype: torch.dtype, device: torch.device,
              max_len: int, group: RankGroup | None = None) -> PagedKVCache:
    """Size the pool: what a full batch of max-length sequences can use, capped by the budget
    (`kv_cache_gib`, else on CUDA the free memory the utilization share leaves after weights
    and an activation reserve, else 2 GiB on CPU). Tensor-parallel ranks agree on one block
    count (each holds its own KV heads of every block)."""
    per_token = kv_bytes_per_token(args.num_layers, args.num_kv_heads, args.head_dim, torch.finfo(dtype).bits // 8)
    block = config.kv_block_size
    useful = config.max_batch_size * math.ceil(max_len / block) + 1
    budget = _kv_budget_bytes(args, config, dtype, device)
    num_blocks = max(2, min(useful, budget // (per_token * block)))
    if group is not None:
        num_blocks = group.agree_blocks(num_blocks)
    log.info("KV cache: %d blocks of %d tokens (%.2f GiB)", num_blocks, block, num_blocks * block * per_token / 2**30)
    return PagedKVCache(args.num_layers, args.num_kv_heads, args.head_dim, BlockKVCacheManager(num_blocks, block),
                        dtype, device)


def _kv_budget_bytes(args: LlamaArgs, config: EngineConfig, dtype: torch.dtype, device: torch.device) -> int:
    if config.kv_cache_gib is not None:
        return int(config.kv_cache_gib * 2**30)
    if device.type != "cuda":
        return 2 * 2**30
    free, total = torch.cuda.mem_get_info(device)
    item = torch.finfo(dtype).bits // 8
    # the largest activations of a prefill chunk (MLP in/out) and of fp32 logits for a full batch
    reserve = 4 * PREFILL_CHUNK * (args.hidden_size + 2 * args.intermediate_size) * item
    reserve += 3 * config.max_batch_size * args.vocab_size * 4 + 2**30  # + graphs, allocator slack
    budget = int(total * config.gpu_memory_utilization) - (total - free) - reserve
    if budget <= 0:
        raise ConfigError(
            f"no GPU memory left for the KV cache: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB "
            f"after the weights, {reserve / 2**30:.1f} GiB reserved for activations",
            hint="raise gpu_memory_utilization, lower max_batch_size, or use a larger GPU",
        )
    return budget
