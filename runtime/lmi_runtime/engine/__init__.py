"""Backend-independent engine core: requests, scheduling, sampling, detokenization and the
asyncio-facing loop. Backends (torch, transformers, later TensorRT-LLM/Neuron) plug in through
`lmi_runtime.engine.backend.Backend`, and claim KV-cache room through
`lmi_runtime.engine.kv_cache.KVCacheManager`; the engine never imports a backend."""
