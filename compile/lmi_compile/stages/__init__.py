"""The pipeline's stages, one module each, each a typed function from its input to its output:
plan (recipe → Plan), fetch (source → model folder), quantize (model folder → quantized folder +
report), compile (model folder → the target's files), publish (artifact folder → destination)."""
