"""Packed layers read from small compressed-tensors checkpoints written by llm-compressor's own
schemes on a tiny random Llama (no calibration: seconds): each converts exactly, serves on the
forced packed path, a scheme the packed layers do not cover falls back to the dense path with
the reason logged, and the compile stage's pre-packed weights load the same (another layout
version refused)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

from lmi_compile.targets import torch_target
from lmi_runtime.artifact.folder import read_manifest, write_manifest
from lmi_runtime.artifact.toolchain import check_target
from lmi_runtime.backends.loader import load_backend
from lmi_runtime.config.engine_settings import engine_config
from lmi_runtime.engine.config import EngineConfig
from lmi_runtime.errors import ArtifactError, ConfigError, LmiError, ModelFolderError
from lmi_runtime.hardware.probe import probe_cpu
from lmi_runtime.locate import inspect_folder
from lmi_runtime.quant import compressed, prepacked
from lmi_runtime.quant.compressed import Unsupported, scheme_of
from lmi_runtime.quant.packed import dequantize
from tiny_llama import save_tiny_llama

INT8_CHANNEL = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                                               "strategy": "channel"}}}  # as static_int8
SCHEMES = {  # llm-compressor preset (or config groups) -> what the packed layers hold
    "FP8_DYNAMIC": "fp8 act-fp8 ×14",
    "W4A16": "int4 g128 ×14",  # symmetric
    "W4A16_ASYM": "int4 g128 ×14",
    "W8A8": "int8 act-int8 ×14",
    "INT8_CHANNEL": "int8 ×14",
}


@pytest.fixture(scope="module")
def tiny_quantized(tmp_path_factory, smollm2_dir):
    """`tiny_quantized(scheme)` -> a compressed-tensors folder of a 2-layer random Llama."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import LlamaForCausalLM

    done: dict[str, Path] = {}

    def get(scheme: str) -> Path:
        if scheme not in done:
            out = tmp_path_factory.mktemp(scheme.lower())
            # llm-compressor reads the config back from a folder; the tokenizer goes beside the result
            model = LlamaForCausalLM.from_pretrained(save_tiny_llama(out / "dense", smollm2_dir))
            if scheme == "INT8_CHANNEL":
                modifier = QuantizationModifier(config_groups=INT8_CHANNEL, ignore=["lm_head"])
            else:
                modifier = QuantizationModifier(scheme=scheme, targets=["Linear"], ignore=["lm_head"])
            oneshot(model=model, recipe=[modifier])
            model.save_pretrained(out, save_compressed=True)
            for file in (out / "dense").iterdir():
                if file.name.startswith(("tokenizer", "special_tokens")):
                    (out / file.name).write_bytes(file.read_bytes())
            done[scheme] = out
        return done[scheme]

    return get


def dequantized_by_transformers(folder: Path) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                 quantization_config=CompressedTensorsConfig(run_compressed=False))
    return model.state_dict()


def read(folder: Path) -> compressed.Checkpoint:
    quant = json.loads((folder / "config.json").read_text())["quantization_config"]
    return compressed.read(sorted(folder.glob("*.safetensors")), quant)


def check_packed_is_transformers_dequantized(folder: Path, summary: str) -> dict[str, torch.Tensor]:
    """Every packed layer dequantizes bit for bit to transformers' weight; returns transformers' weights."""
    checkpoint = read(folder)
    assert checkpoint.summary() == summary
    reference = dequantized_by_transformers(folder)
    for name, weight in checkpoint.packed.items():
        assert torch.equal(dequantize(weight, torch.float32), reference[f"{name}.weight"]), name
    return reference


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_packed_weights_equal_transformers_dequantized(tiny_quantized, scheme):
    folder = tiny_quantized(scheme)
    reference = check_packed_is_transformers_dequantized(folder, SCHEMES[scheme])
    checkpoint = read(folder)
    assert torch.equal(checkpoint.dense["model.embed_tokens.weight"], reference["model.embed_tokens.weight"])


@pytest.mark.parametrize("scheme", ["FP8_DYNAMIC", "W4A16_ASYM"])
def test_forced_packed_path_scores_like_transformers(tiny_quantized, scheme):
    """The CPU packed path (dequantize + matmul, activations quantized per token for fp8)
    against transformers running the decompressed checkpoint with compressed-tensors' hooks."""
    folder = tiny_quantized(scheme)
    packed = load_backend(inspect_folder(folder), EngineConfig(max_batch_size=2, quantized_kernels="on"))
    assert packed.info.details["quantized_layers"] == SCHEMES[scheme]
    assert type(packed.model.model.layers[0].mlp.gate_up_proj).__name__ == "QuantLinear"
    reference = load_backend(inspect_folder(folder), EngineConfig(max_batch_size=2, backend="transformers"))
    ids = list(range(100, 140))
    ours, theirs = packed.score(ids), reference.score(ids)
    assert torch.allclose(ours, theirs, atol=1e-3, rtol=1e-3), (ours - theirs).abs().max()


def test_cpu_serves_dense_unless_forced(tiny_quantized):
    backend = load_backend(inspect_folder(tiny_quantized("W4A16")), EngineConfig(max_batch_size=2))
    assert "quantized_layers" not in backend.info.details
    assert type(backend.model.model.layers[0].mlp.gate_up_proj).__name__ == "Linear"


def test_an_uncovered_scheme_falls_back_to_dense_and_says_why(tiny_quantized, caplog):
    with caplog.at_level(logging.INFO, logger="lmi_runtime.loader"):
        backend = load_backend(inspect_folder(tiny_quantized("W8A16")),  # int8 by groups of 128
                               EngineConfig(max_batch_size=2, quantized_kernels="on"))
    assert "quantized_layers" not in backend.info.details
    assert "served dequantized" in caplog.text and "8-bit int weights by group" in caplog.text


def test_act_order_that_is_not_the_identity_is_refused(tiny_quantized, tmp_path):
    folder = tiny_quantized("W4A16")
    tensors = load_file(str(folder / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj"
    tensors[f"{name}.weight_g_idx"] = torch.arange(256, dtype=torch.int32) // 128
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_bytes((folder / "config.json").read_bytes())
    read(tmp_path)  # the identity order packs
    tensors[f"{name}.weight_g_idx"] = tensors[f"{name}.weight_g_idx"].flip(0)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(Unsupported, match="act-order"):
        read(tmp_path)


@pytest.mark.parametrize("group, reason", [
    ({"weights": {"type": "int", "num_bits": 4, "strategy": "group", "group_size": 24}}, "group size 24"),
    ({"weights": {"type": "int", "num_bits": 3, "strategy": "group", "group_size": 64}}, "3-bit int"),
    ({"weights": {"type": "int", "num_bits": 8, "strategy": "channel"},
      "input_activations": {"type": "int", "num_bits": 8, "strategy": "tensor", "dynamic": False}}, "static activation"),
    ({"weights": {"type": "int", "num_bits": 8, "strategy": "channel", "symmetric": False}}, "asymmetric"),
])
def test_schemes_the_packed_layers_do_not_cover_say_why(group, reason):
    with pytest.raises(Unsupported, match=reason):
        scheme_of(group, "pack-quantized")


def test_quantized_kernels_setting_flows_and_is_checked():
    assert engine_config({}, env={"OPTION_QUANTIZED_KERNELS": "on"}).quantized_kernels == "on"
    assert engine_config({"quantized_kernels": "off"}, env={"OPTION_QUANTIZED_KERNELS": "on"}).quantized_kernels == "off"
    with pytest.raises(ConfigError, match="quantized_kernels"):
        EngineConfig(quantized_kernels="yes")


def test_prepacked_artifact_loads_without_conversion_and_scores_the_same(tiny_quantized, tmp_path):
    folder = tiny_quantized("W4A16_ASYM")
    artifact = torch_target.local_artifact(folder, tmp_path / "artifact")
    manifest = read_manifest(artifact)
    assert next(iter(manifest.profiles.values())).target.toolchain["weights_layout"] == prepacked.LAYOUT
    assert not list(artifact.glob("*.safetensors")) and prepacked.layout_of([artifact / "rank0" / "model.safetensors"])
    ids = list(range(100, 140))
    for mode in ("on", "off"):
        converted = load_backend(inspect_folder(folder), EngineConfig(max_batch_size=2, quantized_kernels=mode))
        loaded = load_backend(inspect_folder(artifact), EngineConfig(max_batch_size=2, quantized_kernels=mode))
        assert loaded.info.details.get("quantized_layers") == converted.info.details.get("quantized_layers")
        assert torch.equal(loaded.score(ids), converted.score(ids)), mode
    with pytest.raises(ModelFolderError, match="(?s)pre-packed.*--backend torch"):
        load_backend(inspect_folder(artifact), EngineConfig(backend="transformers"))


def test_another_layout_version_is_refused_clearly(tiny_quantized, tmp_path):
    artifact = torch_target.local_artifact(tiny_quantized("W4A16"), tmp_path / "artifact")
    manifest = read_manifest(artifact)
    target = next(iter(manifest.profiles.values())).target
    target.toolchain["weights_layout"] = "lmi-packed-9"
    with pytest.raises(ArtifactError, match="layout 'lmi-packed-9'; this lmi-serve reads 'lmi-packed-1' only"):
        check_target(target, probe_cpu(), {})
    write_manifest(artifact, manifest)
    with pytest.raises(LmiError, match="layout 'lmi-packed-9'"):
        load_backend(inspect_folder(artifact), EngineConfig())
    weights = artifact / "rank0" / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    save_file(tensors, str(weights), metadata={**metadata, prepacked.LAYOUT_KEY: "lmi-packed-9"})
    with pytest.raises(ModelFolderError, match="layout 'lmi-packed-9'; this lmi-serve reads 'lmi-packed-1' only"):
        prepacked.load([weights])
    save_file(tensors, str(weights), metadata={**metadata, prepacked.LAYERS_KEY: '{"model.layers.0.mlp.up_proj": {}}'})
    with pytest.raises(ModelFolderError, match="description .* is damaged"):
        prepacked.load([weights])


def test_compile_copies_a_scheme_it_cannot_pack_as_stored_and_says_why(tiny_quantized, tmp_path):
    folder = tiny_quantized("W8A16")
    lines: list[str] = []
    torch_target.build(folder, tmp_path, tp_degree=1, log=lines.append)
    assert any("not pre-packed" in line and "8-bit int weights by group" in line for line in lines), lines
    assert (tmp_path / "rank0" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert "weights_layout" not in torch_target.describe(1, "float32", tmp_path).toolchain
