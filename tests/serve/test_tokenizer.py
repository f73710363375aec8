"""The tokenizer a start loads: the class the manifest records, without transformers' model
registry, and the same tokens as AutoTokenizer; a name that is no transformers tokenizer
falls back to AutoTokenizer."""

from __future__ import annotations

import logging
import subprocess

import pytest
from transformers import AutoTokenizer

from lmi_runtime.tokenizer import class_to_record, load_tokenizer

TEXTS = ["Hello, world!", "  leading spaces and ünïcödé\nnew line", "<|im_start|>user\nhi<|im_end|>"]
REGISTRY = "transformers.models.auto.auto_factory"  # what AutoTokenizer imports to choose a class
LOAD = """
import sys
from lmi_runtime.tokenizer import load_tokenizer
tokenizer = load_tokenizer(sys.argv[1], False, sys.argv[2] or None)
print(type(tokenizer).__name__, {registry!r} in sys.modules)
"""


@pytest.fixture(scope="module")
def auto(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir, clean_up_tokenization_spaces=False)


def test_the_recorded_class_is_what_autotokenizer_chose(auto):
    assert class_to_record(auto) == type(auto).__name__ == "TokenizersBackend"


@pytest.mark.parametrize("recorded, registry", [("TokenizersBackend", False), ("", True)])
def test_a_recorded_class_loads_without_the_model_registry(smollm2_dir, python, cli_env, recorded, registry):
    done = subprocess.run([python, "-c", LOAD.format(registry=REGISTRY), str(smollm2_dir), recorded], env=cli_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["TokenizersBackend", str(registry)]


def test_the_recorded_class_tokenizes_as_autotokenizer_does(smollm2_dir, auto):
    direct = load_tokenizer(smollm2_dir, False, "TokenizersBackend")
    for text in TEXTS:
        assert direct(text)["input_ids"] == auto(text)["input_ids"]
        assert direct.decode(auto(text)["input_ids"]) == auto.decode(auto(text)["input_ids"])
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    assert direct.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        auto.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (direct.eos_token_id, direct.bos_token_id) == (auto.eos_token_id, auto.bos_token_id)


@pytest.mark.parametrize("name", ["AutoModelForCausalLM", "NoSuchTokenizer", "os", "__class__"])
def test_a_name_that_is_no_transformers_tokenizer_falls_back_to_autotokenizer(smollm2_dir, auto, caplog, name):
    with caplog.at_level(logging.WARNING, logger="lmi_runtime.tokenizer"):
        tokenizer = load_tokenizer(smollm2_dir, False, name)
    assert type(tokenizer) is type(auto)
    assert f"tokenizer class {name!r} is not a tokenizer" in caplog.text


@pytest.mark.parametrize("device, thread", [("cuda", "lmi-tokenizer"), ("cpu", "MainThread")])
def test_a_gpu_start_loads_the_tokenizer_beside_the_weights_and_a_cpu_start_in_place(smollm2_dir, monkeypatch,
                                                                                       device, thread):
    """On a GPU the tokenizer loads on its own thread while the weights are read; on the CPU,
    where the read is a memory map, in place. Its error reaches the start either way."""
    import threading

    import torch

    from lmi_runtime.backends import loader
    from lmi_runtime.engine.config import EngineConfig
    from lmi_runtime.locate import inspect_folder

    files = inspect_folder(smollm2_dir, verify=False)
    seen = []

    def recording(*args):
        seen.append(threading.current_thread().name)
        return load_tokenizer(*args)

    monkeypatch.setattr(loader, "load_tokenizer", recording)
    tokenizer = loader._tokenizer_meanwhile(files, EngineConfig(), torch.device(device)).result(timeout=300)
    assert tokenizer("Hello, world!")["input_ids"] and seen[0].startswith(thread)

    def failing(*args):
        raise OSError("tokenizer.json unreadable")

    monkeypatch.setattr(loader, "load_tokenizer", failing)
    with pytest.raises(OSError, match="unreadable"):
        loader._tokenizer_meanwhile(files, EngineConfig(), torch.device(device)).result(timeout=60)
