"""The neuron target's export command for the must-show deployment (Mistral-7B on
ml.inf2.24xlarge with static_int8) and a supported one, checked against optimum-neuron 0.4.5's
own export parser: the snapshot always, the real `parse_args_neuronx` with LMI_VENDOR_SITE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vendor_argv import flags, value
from lmi_compile.targets import neuron
from lmi_runtime.backends.neuron_backend import sampling_row, writable_cache
from lmi_runtime.engine.request import SamplingParams
from lmi_runtime.errors import ConfigError
from script_module import load_script

M, O = Path("/model"), Path("/out")
PARSE = ("import json, sys; from argparse import ArgumentParser;"
         "from optimum.commands.export.neuronx import parse_args_neuronx;"
         "p = ArgumentParser(); parse_args_neuronx(p);"
         "a = vars(p.parse_args(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {argv}));"
         "print(json.dumps({{k: str(v) for k, v in a.items()}}))")


def check_against_snapshot(interfaces: dict, argv: list[str]) -> None:
    on = interfaces["optimum_neuron"]
    assert argv[:3] == ["optimum-cli", "export", "neuron"]
    assert set(flags(argv)) <= set(on["export_cli_options"]), set(flags(argv)) - set(on["export_cli_options"])
    assert value(argv, "--instance_type") in on["instance_type_choices"]


def test_mistral_7b_static_int8_on_inf2_24xlarge(plan_for, interfaces):
    plan = plan_for("mistral-7b", "ml.inf2.24xlarge", quantize={"method": "static_int8"})
    assert (plan.backend, plan.tp_degree, plan.max_total_len, plan.hardware.arch) == ("neuron", 8, 4096,
                                                                                      "neuroncore-v2")
    argv = neuron.export_command(plan, M, O)
    assert argv == ["optimum-cli", "export", "neuron", "--model", "/model", "--task", "text-generation",
                    "--batch_size", str(plan.max_batch_size), "--sequence_length", "4096",
                    "--tensor_parallel_size", "8", "--instance_type", "inf2", "/out"]
    check_against_snapshot(interfaces, argv)
    # ...but optimum-neuron 0.4.5 can build neither half of it, and the target says so up front:
    on = interfaces["optimum_neuron"]
    assert not any("int8" in f or "quant" in f for f in on["export_cli_options"])  # no int8 weight option
    with pytest.raises(ConfigError, match="'static_int8' is not available with optimum-neuron 0.4.5"):
        neuron.check(plan)
    unquantized = plan.model_copy(update={"quantization": "none"})
    assert "mistral" not in on["text_generation_model_types"]
    with pytest.raises(ConfigError, match="no Neuron implementation of 'mistral'"):
        neuron.check(unquantized)


def test_llama2_7b_on_inf2_24xlarge_exports(plan_for, interfaces):
    plan = plan_for("llama-2-7b", "ml.inf2.24xlarge", limits={"max_batch_size": 4, "max_concurrent_requests": 64})
    neuron.check(plan)
    assert tuple(neuron.SUPPORTED_MODEL_TYPES) == tuple(interfaces["optimum_neuron"]["text_generation_model_types"])
    argv = neuron.export_command(plan, M, O)
    assert argv[argv.index("--batch_size"):] == ["--batch_size", "4", "--sequence_length", "4096",
                                                 "--tensor_parallel_size", "8", "--instance_type", "inf2", "/out"]
    check_against_snapshot(interfaces, argv)
    # the decoder export drops --auto_cast_type, which is why the dtype goes into config.json instead
    assert "auto_cast_type" in interfaces["optimum_neuron"]["decoder_export_ignores"]
    assert "--auto_cast_type" not in argv
    info = neuron.describe(plan, {"neuronx-cc": neuron.NEURONX_CC_VERSION})
    assert info.hardware.neuron_core_version == "v2" and info.tp_degree == 8


def test_export_command_parses_with_the_real_optimum_neuron_parser(plan_for, vendor_python):
    plan = plan_for("mistral-7b", "ml.inf2.24xlarge")
    argv = neuron.export_command(plan, M, O)[3:]
    parsed = json.loads(vendor_python(PARSE.format(argv=json.dumps(argv))))
    assert parsed["model"] == "/model" and parsed["output"] == "/out" and parsed["task"] == "text-generation"
    assert (parsed["batch_size"], parsed["sequence_length"], parsed["tensor_parallel_size"]) == (
        str(plan.max_batch_size), "4096", "8")
    assert parsed["instance_type"] == "inf2"


def test_sampling_rows_for_on_device_sampling():
    assert sampling_row(SamplingParams(), 256) == [1.0, 1.0, 1.0]
    assert sampling_row(SamplingParams(do_sample=True, temperature=0.5, top_p=0.9), 256) == [256.0, 0.9, 0.5]
    assert sampling_row(SamplingParams(do_sample=True, top_k=1000), 256)[0] == 256.0


def test_compile_cache_is_copied_to_a_writable_folder(tmp_path):
    artifact = tmp_path / "artifact"
    entry = artifact / "neuron-cache" / "neuronxcc-2.21.33363.0" / "MODULE_abc"
    entry.mkdir(parents=True)
    (entry / "model.neff").write_bytes(b"neff")
    artifact.chmod(0o555)
    try:
        cache = writable_cache(artifact, tmp_path / "scratch")
        assert (cache / "neuronxcc-2.21.33363.0" / "MODULE_abc" / "model.neff").read_bytes() == b"neff"
        (cache / "new-entry").mkdir()  # the runtime can write there
    finally:
        artifact.chmod(0o755)


def test_snapshot_matches_the_vendor_wheels(interfaces, vendor_python):
    """The committed snapshot is what scripts/vendor_interfaces.py reads from the wheels now."""
    import os

    module = load_script("vendor_interfaces")
    wheels = Path(os.environ["LMI_VENDOR_SITE"] + ".wheels")
    assert module.optimum_neuron(wheels) == interfaces["optimum_neuron"]
    assert module.modelopt(wheels) == interfaces["modelopt"]


class RecordingNeuronModel:
    """Stands in for optimum-neuron's compiled model with its forward signature
    (input_ids, position_ids=, seq_ids=, sampling_params=); records each call and returns, per
    row, 100 × slot + the row's largest position (the context-encoding graph takes each row's
    last real token at its largest position, so right padding is harmless) as the 'sampled'
    token, so the test can see which slot and position every sequence was run at."""

    def __init__(self, batch_size: int = 2):
        from types import SimpleNamespace

        self.neuron_config = SimpleNamespace(batch_size=batch_size, max_topk=256, sequence_length=64,
                                             on_device_sampling=True, tp_degree=1)
        self.calls: list[dict] = []

    def __call__(self, input_ids, position_ids, seq_ids, sampling_params):
        self.calls.append({"ids": input_ids.tolist(), "pos": position_ids.tolist(), "slots": seq_ids.tolist(),
                           "sampling": sampling_params.tolist()})
        return seq_ids * 100 + position_ids.max(dim=1).values


def test_the_backend_uses_only_neuron_config_fields_and_the_forward_signature_of_the_wheel(interfaces):
    on = interfaces["optimum_neuron"]
    used = set(RecordingNeuronModel().neuron_config.__dict__)  # what NeuronBackend reads
    assert used <= set(on["neuron_config_params"])
    assert on["decoder_forward_params"][1:5] == ["input_ids", "position_ids", "seq_ids", "sampling_params"]


def test_neuron_backend_runs_each_sequence_in_its_own_slot():
    from lmi_runtime.engine.backend import ServedModel
    from lmi_runtime.backends.neuron_backend import NeuronBackend
    from lmi_runtime.engine.request import Sequence

    model = RecordingNeuronModel()
    backend = NeuronBackend(model, None, ServedModel("m", 64, {0}, 1000))
    a = Sequence([5, 6, 7], SamplingParams(), max_new_tokens=4)
    b = Sequence([8, 9], SamplingParams(do_sample=True, temperature=0.5), max_new_tokens=4)
    c = Sequence([1], SamplingParams(), max_new_tokens=4)
    assert backend.reserve(a) and backend.reserve(b) and not backend.reserve(c)  # two compiled slots
    backend.start([b, a])
    assert model.calls[-1] == {"ids": [[5, 6, 7], [8, 9, 0]], "pos": [[0, 1, 2], [0, 1, 0]], "slots": [0, 1],
                               "sampling": [[1.0, 1.0, 1.0], [256.0, 1.0, 0.5]]}  # slot order, padded
    steps = backend.poll([a, b])
    assert [(s.seq is a, s.token) for s in steps] == [(True, 2), (False, 101)]  # prefill tokens, no new call
    a.output_ids.append(2)
    b.output_ids.append(101)
    steps = backend.poll([a, b])
    assert model.calls[-1]["ids"] == [[2], [101]] and model.calls[-1]["pos"] == [[3], [2]]
    assert [s.token for s in steps] == [3, 102]
    backend.free(a)
    assert backend.reserve(c)  # a's slot is reused
    backend.start([c])
    assert model.calls[-1] == {"ids": [[1, 0]], "pos": [[0, 0]], "slots": [0], "sampling": [[1.0, 1.0, 1.0]]}
