"""Load a model folder into a backend: the compact torch model for the Llama family, the
transformers implementation for everything else (or when asked for).

Quantized checkpoints in compressed-tensors format (what `lmi-compile quantize` writes), or
pre-packed by the compile stage, are read as packed layers (`quant.compressed`,
`quant.prepacked`). The compact model keeps them packed (quantized matmuls: the weight memory
is the quantized size) when `quantized_kernels` says so (auto: on CUDA); otherwise, on CPU by
default where dense matmuls are faster, they are dequantized once at load. A scheme the packed
layers do not cover, and every quantized model on the transformers backend, is dequantized
through transformers + compressed-tensors (`run_compressed=False`) as dense weights.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from lmi_runtime.backends.staged_read import read_weights
from lmi_runtime.backends.llama_model import LlamaArgs, LlamaForCausalLM, UnsupportedArchitecture
from lmi_runtime.backends.paged_cache import PagedKVCache
from lmi_runtime.backends.tensor_parallel import Leader, RankGroup, artifact_degree, close, join
from lmi_runtime.backends.tp_sharding import shard_args
from lmi_runtime.engine.backend import Backend, ServedModel
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.engine.kv_budget import KvCachePlan, activation_reserve, kv_cache_plan, pool_blocks
from lmi_runtime.engine.kv_cache import BlockKVCacheManager
from lmi_runtime.errors import ConfigError, ModelFolderError
from lmi_runtime.kv_bytes import kv_bytes_per_token
from lmi_runtime.locate import ModelFiles
from lmi_runtime.quant import compressed, prepacked
from lmi_runtime.quant.compressed import Checkpoint
from lmi_runtime.quant.linear import KERNEL_MAX_TOKENS
from lmi_runtime.quant.packed import PackedWeight
from lmi_runtime.quant.rtn import kind_at_load, quantize_layers
from lmi_runtime.tokenizer import load_tokenizer

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


def _checkpoint(files: ModelFiles, hf_config: dict, device: torch.device) -> Checkpoint | None:
    """Quantized weights as packed layers on `device`: pre-packed by the compile stage, or
    converted from compressed-tensors now; None for a dense checkpoint or a scheme the packed
    layers do not cover (logged: transformers then dequantizes it)."""
    if prepacked.layout_of(files.weights, files.growing) is not None:
        return prepacked.load(files.weights, str(device), files.growing)
    if not _is_compressed(hf_config):
        return None
    try:
        return compressed.read(files.weights, hf_config["quantization_config"], device, files.growing)
    except compressed.Unsupported as err:
        log.info("quantized weights served dequantized (dense, through transformers): %s", err)
        return None


def _weights(files: ModelFiles, config: EngineConfig, dtype: torch.dtype, hf_config: dict, device: torch.device,
             packed_wanted: bool) -> tuple[dict, Checkpoint | None]:
    """The dense tensors, and the checkpoint whose layers stay packed (None: all dense), read
    from the memory-mapped files straight onto `device`: no CPU copy of the whole model, and
    the projections are fused where they will run (`scripts/bench_load.py` measures it)."""
    if hf_config.get("quantization_config") and not _is_compressed(hf_config):
        method = hf_config["quantization_config"].get("quant_method")
        raise ModelFolderError(
            f"quantization method '{method}' is not supported by the torch backend",
            hint="quantize to compressed-tensors with lmi-compile, or use --backend transformers",
        )
    checkpoint = _checkpoint(files, hf_config, device)
    if checkpoint is not None:
        return (checkpoint.dense, checkpoint) if packed_wanted else (checkpoint.dense_state(dtype), None)
    if _is_compressed(hf_config):
        return _hf_model(files, config, dtype, hf_config).state_dict(), None
    return read_weights(files.weights, device, files.growing), None


def _packed_wanted(config: EngineConfig, device: torch.device) -> bool:
    return config.quantized_kernels == "on" or (config.quantized_kernels == "auto" and device.type == "cuda")


def _build_llama(args: LlamaArgs, state: dict, dtype: torch.dtype, device: torch.device,
                 max_len: int, packed: dict[str, PackedWeight] | None = None) -> LlamaForCausalLM:
    """`packed`: layers (names without `.weight`) that stay quantized; `state` has the rest."""
    packed = packed or {}
    with torch.device("meta"):
        model = LlamaForCausalLM(args)
    skipped = {f"{name}.weight" for name in packed} | ({"lm_head.weight"} if args.tie_word_embeddings else set())
    wanted = set(model.state_dict()) - skipped
    missing = sorted(wanted - state.keys())
    if missing:
        raise ModelFolderError(
            f"the checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}",
            hint="check that the weights match config.json",
        )
    # taken out of `state`, so that fusing frees each layer's parts as it goes (peak: the
    # model plus one layer's fused projections, not two models)
    weights = {k: state.pop(k).to(dtype) for k in wanted}
    model.load_state_dict(weights, strict=False, assign=True)
    weights.clear()
    model.tie_weights()
    model.use_packed(packed)  # QuantLinear buffers: moved with the model below
    model.prepare(max_len, device, dtype)
    return model.to(device).eval()


def _tokenizer_meanwhile(files: ModelFiles, config: EngineConfig, device: torch.device) -> Future:
    """The tokenizer; for a GPU, loaded on a thread while the weights are read. Most of its ~2 s
    on the H100 machine was importing transformers (Python, on the GIL), while the staged reader's
    threads wait on the disk and the GPU copies with the GIL released: the model was assembled
    0.4-1.1 s sooner there. The caller takes `result()` once the weights are read, before the
    model is assembled: a thread importing Python makes every torch op that releases the GIL wait
    up to the switch interval to take it back (it had stretched the assembly of the bundled model
    from 0.14 to 2.8 s on 2 CPU cores). On the CPU the weights are a memory map, with nothing to
    overlap: there the thread made `load_backend` of the bundled int8 artifact 0.45-0.55 s slower
    (3 loads each, 2 cores), so it loads in place. Errors surface at `result()`."""
    def load():
        tokenizer = load_tokenizer(files.root, config.trust_remote_code,
                                   files.manifest.model.tokenizer_class if files.manifest is not None else None)
        log.debug("tokenizer loaded (%s)", type(tokenizer).__name__)
        return tokenizer

    if device.type != "cuda":
        loaded: Future = Future()
        loaded.set_result(load())
        return loaded
    pool = ThreadPoolExecutor(1, thread_name_prefix="lmi-tokenizer")
    future = pool.submit(load)
    pool.shutdown(wait=False)
    return future


def load_backend(files: ModelFiles, config: EngineConfig, rank: int = 0) -> Backend:
    """`rank` > 0: a tensor-parallel worker (`files` then holds that rank's shard)."""
    hf_config = json.loads((files.root / "config.json").read_text())
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, hf_config, device)
    loading = _tokenizer_meanwhile(files, config, device)
    limit = hf_config.get("max_position_embeddings") or DEFAULT_MAX_LEN
    max_len = config.max_model_len or min(limit, DEFAULT_MAX_LEN)
    if max_len > limit:
        raise ConfigError(f"max_model_len {max_len} exceeds the model's max_position_embeddings {limit}")
    name = config.served_model_name or files.root.name
    quant = (hf_config.get("quantization_config") or {}).get("quant_method", "none")
    details = {"dtype": str(dtype).removeprefix("torch."), "device": str(device), "quantization": quant}
    at_load = None if hf_config.get("quantization_config") else kind_at_load(config.quantize)

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

        if prepacked.layout_of(files.weights, files.growing) is not None:
            raise ModelFolderError("these weights are pre-packed for the torch backend (lmi-compile target torch); "
                                   "the transformers backend cannot read them", hint="use --backend torch (or auto)")
        if at_load is not None:
            raise ConfigError(f"quantize={config.quantize} at load needs the torch backend (Llama family); "
                              f"this model is served by transformers", hint="unset OPTION_QUANTIZE / --quantize")
        if artifact_degree(files) > 1:
            raise ModelFolderError(f"this artifact is split for tensor parallel degree {artifact_degree(files)}; "
                                   "only the torch backend (Llama family) runs several ranks",
                                   hint="use --backend torch (or auto)")

        tokenizer = loading.result()  # before transformers' model import, which would contend with it
        model = _hf_model(files, config, dtype, hf_config).to(device)
        info = ServedModel(name, max_len, _eos_ids(files, hf_config, tokenizer), hf_config["vocab_size"],
                           {**details, "backend": "transformers"})
        return TransformersBackend(model, tokenizer, info, device)

    if args.sliding_window:
        max_len = min(max_len, args.sliding_window)  # exact attention within the window
    group = join(files, config, rank, device)  # None: one rank
    try:
        if group is not None:
            device, args = group.device, shard_args(args, group.world)
            details["tensor_parallel_degree"] = str(group.world)
        packed_wanted = _packed_wanted(config, device)
        state, checkpoint = _weights(files, config, dtype, hf_config, device, packed_wanted)
        tokenizer = loading.result()
        if checkpoint is not None:
            details["quantized_layers"] = checkpoint.summary()
            log.info("quantized layers kept packed: %s", details["quantized_layers"])
        log.info("rank %d read %d bytes of weights from %s", rank, sum(p.stat().st_size for p in files.weights),
                 ", ".join(p.relative_to(files.root).as_posix() for p in files.weights))
        model = _build_llama(args, state, dtype, device, max_len, checkpoint.packed if checkpoint else None)
        log.debug("model assembled (projections fused, rotary tables built)")
        if at_load is not None:
            count = quantize_layers(model.model.layers, at_load, packed=packed_wanted)
            details["quantization"] = f"{config.quantize} (at load)"
            details["quantized_layers"] = f"{at_load} ×{count}" + ("" if packed_wanted else " (rounded, served dense)")
            log.info("quantized at load, round-to-nearest per channel: %s", details["quantized_layers"])
        if group is not None:
            model.all_reduce = group.all_reduce
            # every rank's weights landed and checked before the first collective, which a
            # rank left waiting on a failed download would hang
            files.wait_arrived()
        kv = _kv_cache(args, config, dtype, device, max_len, group,
                       files.manifest.limits.kv_cache if files.manifest is not None else None)
        info = ServedModel(name, max_len, _eos_ids(files, hf_config, tokenizer), args.vocab_size,
                           {**details, "backend": "torch", "kv_cache_tokens": str(kv.blocks.capacity_tokens)})
        backend = torch_backend(model, tokenizer, info, kv, config, files.weights[0].parent)
        if group is not None and rank == 0:
            backend.tp = Leader(group)
        return backend
    except BaseException:
        if group is not None:
            close(group, kill=True)  # rank 0's workers end now, not when this process exits
        raise


def torch_backend(model: LlamaForCausalLM, tokenizer, info: ServedModel, kv: PagedKVCache,
                  config: EngineConfig, weights_dir: Path | None = None) -> Backend:
    """The compact model's backend; on CUDA with compiled layers and decode graphs unless
    `enforce_eager`, their code from the kernel cache when there is one (`kernels.cache`; an
    artifact ships one beside a rank's weights, in `weights_dir`)."""
    from lmi_runtime.backends.decode_graphs import DecodeGraphs
    from lmi_runtime.backends.torch_llama import TorchLlamaBackend
    from lmi_runtime.kernels import cache

    backend = TorchLlamaBackend(model, tokenizer, info, kv, prefill_chunk(config))
    if kv.pool.device.type == "cuda" and not config.enforce_eager:
        kernels = cache.for_start(config.kernel_cache, weights_dir, kv.pool.device, config.recompile)
        if kernels is not None:
            info.details["kernel_cache"] = "loaded" if kernels.begin() else "built"
        model.compile_layers()
        backend.graphs = DecodeGraphs(backend, config.max_batch_size)
        backend.graphs.capture(backend)
        backend.warm_prefill(2 * KERNEL_MAX_TOKENS)  # one size past the fused kernel's: cuBLAS's dequantization
        if kernels is not None:
            kernels.finish()
    info.details["cuda_graphs"] = str(backend.graphs is not None).lower()
    return backend


def prefill_chunk(config: EngineConfig) -> int:
    """Tokens per prefill forward: the torch backend's chunk, or the prompt budget when lower,
    so that the budget bounds each forward's activations too."""
    return min(PREFILL_CHUNK, config.max_prefill_tokens or PREFILL_CHUNK)


def _kv_cache(args: LlamaArgs, config: EngineConfig, dtype: torch.dtype, device: torch.device,
              max_len: int, group: RankGroup | None = None, planned: KvCachePlan | None = None) -> PagedKVCache:
    """Size the pool from a budget (`kv_budget_bytes`) in whole blocks, at most what a full batch
    of max-length sequences can use. Tensor-parallel ranks agree on one block count (each holds
    its own KV heads of every block)."""
    per_token = _kv_bytes_per_token(args, dtype)
    block = config.kv_block_size
    budget, source = kv_budget_bytes(args, config, dtype, device, max_len, planned)
    num_blocks = pool_blocks(budget, per_token, block, config.max_batch_size, max_len)
    if group is not None:
        num_blocks = group.agree_blocks(num_blocks)
    capacity = (num_blocks - 1) * block  # block 0 is the scratch block
    capped = capacity * per_token < budget - block * per_token
    log.info("KV cache: %s tokens in %d blocks of %d (%.2f GiB), from %s%s", f"{capacity:,}", num_blocks, block,
             num_blocks * block * per_token / 2**30, source,
             f"; capped at what max batch {config.max_batch_size} × {max_len} tokens can use" if capped else "")
    return PagedKVCache(args.num_layers, args.num_kv_heads, args.head_dim, BlockKVCacheManager(num_blocks, block),
                        dtype, device)


def _kv_bytes_per_token(args: LlamaArgs, dtype: torch.dtype) -> int:
    return kv_bytes_per_token(args.num_layers, args.num_kv_heads, args.head_dim, torch.finfo(dtype).bits // 8)


def kv_budget_bytes(args: LlamaArgs, config: EngineConfig, dtype: torch.dtype, device: torch.device, max_len: int,
                    planned: KvCachePlan | None = None) -> tuple[int, str]:
    """The KV-cache bytes of one device, and where the figure comes from: `kv_cache_gib`; else
    the artifact's planned budget (on CUDA no more than the device has free now); else on CUDA
    the free memory, by the planner's formula; else 2 GiB on CPU."""
    if config.kv_cache_gib is not None:
        return int(config.kv_cache_gib * 2**30), f"kv_cache_gib {config.kv_cache_gib:g}"
    measured = _measured_budget(args, config, dtype, device, max_len) if device.type == "cuda" else None
    if planned is not None:
        plan_text = (f"the artifact's plan ({planned.bytes_per_device / 2**30:.2f} GiB per device: "
                     f"{planned.memory_per_device / 2**30:.1f} GiB × {planned.utilization} − weights − reserve)")
        if measured is not None and measured.bytes_per_device < planned.bytes_per_device:
            log.warning("this GPU has less room than the plan assumed: %.2f GiB for the KV cache instead of %.2f GiB",
                        measured.bytes_per_device / 2**30, planned.bytes_per_device / 2**30)
        else:
            return planned.bytes_per_device, plan_text
    if measured is None:
        return 2 * 2**30, "the CPU default (2 GiB; no planned budget in the artifact, --kv-cache-gib sets it)"
    if measured.bytes_per_device <= 0:
        raise ConfigError(
            f"no GPU memory left for the KV cache: {measured.memory_per_device / 2**30:.1f} GiB × "
            f"{measured.utilization} − {measured.weights_per_device / 2**30:.1f} GiB in use (weights) − "
            f"{measured.activation_reserve / 2**30:.1f} GiB reserved for activations",
            hint="raise gpu_memory_utilization, lower max_batch_size, or use a larger GPU",
        )
    return measured.bytes_per_device, (f"free GPU memory ({measured.memory_per_device / 2**30:.1f} GiB × "
                                       f"{measured.utilization} − {measured.weights_per_device / 2**30:.2f} GiB in use − "
                                       f"reserve {measured.activation_reserve / 2**30:.2f} GiB; the planner's formula)")


def _measured_budget(args: LlamaArgs, config: EngineConfig, dtype: torch.dtype, device: torch.device,
                     max_len: int) -> KvCachePlan:
    free, total = torch.cuda.mem_get_info(device)
    return device_kv_plan(args, config, dtype, max_len, memory=total, in_use=total - free)


def device_kv_plan(args: LlamaArgs, config: EngineConfig, dtype: torch.dtype, max_len: int, *, memory: int,
                   in_use: int) -> KvCachePlan:
    """The planner's formula on a device of `memory` bytes whose weights (and runtime) take `in_use`."""
    item = torch.finfo(dtype).bits // 8
    reserve = activation_reserve(hidden_size=args.hidden_size, intermediate_per_rank=args.intermediate_size,
                                 vocab_size=args.vocab_size, dtype_bytes=item, max_num_tokens=prefill_chunk(config),
                                 max_batch_size=config.max_batch_size)
    per_token = _kv_bytes_per_token(args, dtype)
    return kv_cache_plan(memory_per_device=memory, utilization=config.gpu_memory_utilization, weights_per_device=in_use,
                         reserve=reserve, bytes_per_token=per_token, kv_heads_per_device=args.num_kv_heads,
                         max_total_len=max_len)
