"""The model types our compact Llama-family implementation (`llama_model.py`) serves: the one
table that the torch backend's choice, the compile stage's tensor-parallel shards and the
planner's backend reasons all read. Kept free of torch so planning does not import it. (Yi
checkpoints say `model_type: llama`, so they are in.)"""

from __future__ import annotations

LLAMA_FAMILY = frozenset({"llama", "mistral", "qwen2"})
