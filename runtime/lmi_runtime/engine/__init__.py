"""Backend-independent engine core: requests, scheduling, sampling, detokenization and the
asyncio-facing loop. Backends (torch, transformers, later TensorRT-LLM/Neuron) plug in through
`lmi_runtime.backends.base.Backend`."""
