"""A small random Llama saved as a Hugging Face folder with SmolLM2's tokenizer: the model the
tests (and scripts/gpu_check.py) run when the real one would only make them slower."""

from __future__ import annotations

from pathlib import Path

import torch


def save_tiny_llama(out: Path, tokenizer_dir: Path, *, hidden: int = 128, intermediate: int = 256, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, max_positions: int = 256) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy picks are well separated
        model.lm_head.weight.mul_(20)
    model.save_pretrained(out, safe_serialization=True)
    for file in tokenizer_dir.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens")):
            (out / file.name).write_bytes(file.read_bytes())
    return out

