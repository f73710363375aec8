"""Extract the vendor interfaces our trtllm / neuron adapters call into a JSON snapshot
(tests/vendors/data/interfaces.json), read from the vendors' own released files.

    python scripts/vendor_interfaces.py WHEEL_DIR [--out tests/vendors/data/interfaces.json]

WHEEL_DIR holds `optimum_neuron-0.4.5-*.whl` and `nvidia_modelopt-*.whl` (get them with
`pip download --no-deps optimum-neuron==0.4.5 nvidia-modelopt -d WHEEL_DIR`, 2.7 MB, ~5 s).
Nothing is imported: the shipped sources are parsed with `ast` (the wheels need Neuron / CUDA
stacks to import), so this runs on any machine.

TensorRT-LLM is not extracted here: PyPI carries only a 10 kB stub sdist of tensorrt-llm 1.2.1
that downloads the real wheel from pypi.nvidia.com at install time. Its section of the snapshot
is kept as it is (see its "source" field); inside the image of Dockerfile.trtllm,
`python scripts/vendor_interfaces.py --trtllm-installed` re-reads it from the installed package.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import zipfile
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests" / "vendors" / "data" / "interfaces.json"


def argparse_options(source: str, function: str | None = None) -> list[str]:
    """Every option string given to `add_argument` (inside `function` when named)."""
    tree = ast.parse(source)
    if function:
        tree = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            found += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return sorted(set(found))


def argparse_choices(source: str, option: str) -> list[str] | None:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if option in names:
                for kw in node.keywords:
                    if kw.arg == "choices" and isinstance(kw.value, (ast.List, ast.Tuple)):
                        return [e.value for e in kw.value.elts if isinstance(e, ast.Constant)]
    return None


def module_names(source: str) -> list[str]:
    names = []
    for node in ast.parse(source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return sorted(names)


def function_params(source: str, function: str, cls: str | None = None) -> list[str]:
    tree = ast.parse(source)
    if cls:
        tree = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    return [a.arg for a in node.args.args + node.args.kwonlyargs]


def class_fields(source: str, cls: str) -> list[str]:
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls)
    return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]


def decorated_model_types(source: str) -> list[str]:
    """model types registered with @register_neuron_model_for_inference(TYPE, "text-generation")."""
    types = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_neuron_model_for_inference":
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if len(args) == 2 and args[1] == "text-generation":
                types.append(args[0])
    return sorted(types)


def _wheel(folder: Path, prefix: str) -> tuple[zipfile.ZipFile, dict]:
    path = sorted(folder.glob(f"{prefix}-*.whl"))[-1]
    info = {"wheel": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return zipfile.ZipFile(path), info


def optimum_neuron(folder: Path) -> dict:
    wheel, info = _wheel(folder, "optimum_neuron")
    read = lambda name: wheel.read(name).decode()  # noqa: E731
    cli = read("optimum/commands/export/neuronx.py")
    return {
        **info,
        "export_cli_options": argparse_options(cli, "parse_args_neuronx"),
        "auto_cast_type_choices": argparse_choices(cli, "--auto_cast_type"),
        "instance_type_choices": module_names_value(read("optimum/neuron/utils/instance.py"), "SUPPORTED_INSTANCE_TYPES"),
        "text_generation_model_types": decorated_model_types(read("optimum/neuron/models/inference/auto_models.py")),
        # what the decoder export ignores from the CLI (exporters/neuron/__main__.py pops them)
        "decoder_export_ignores": popped_kwargs(read("optimum/exporters/neuron/__main__.py"),
                                                "maybe_export_from_neuron_model_class"),
        "get_neuron_config_params": function_params(read("optimum/neuron/models/inference/modeling_utils.py"),
                                                    "get_neuron_config"),
        "neuron_config_params": function_params(read("optimum/neuron/models/inference/backend/config.py"),
                                                "__init__", "NxDNeuronConfig"),
        "decoder_forward_params": function_params(
            read("optimum/neuron/models/inference/backend/modules/decoder/modeling_decoder.py"), "forward",
            "NxDModelForCausalLM"),
    }


def module_names_value(source: str, name: str) -> list:
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def popped_kwargs(source: str, function: str) -> list[str]:
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == function)
    return sorted(c.args[0].value for c in ast.walk(node) if isinstance(c, ast.Call)
                  and getattr(c.func, "attr", None) == "pop" and getattr(c.func.value, "id", None) == "kwargs")


def modelopt(folder: Path) -> dict:
    wheel, info = _wheel(folder, "nvidia_modelopt")
    read = lambda name: wheel.read(name).decode()  # noqa: E731
    return {
        **info,
        "quantization_configs": [n for n in module_names(read("modelopt/torch/quantization/config.py"))
                                 if n.endswith("_CFG")],
        "export_hf_checkpoint_params": function_params(read("modelopt/torch/export/unified_export_hf.py"),
                                                       "export_hf_checkpoint"),
    }


def trtllm_installed() -> dict:
    """Inside the TensorRT-LLM image: read the same fields from the installed package."""
    import tensorrt_llm
    from tensorrt_llm.commands.build import parse_arguments
    from tensorrt_llm.llmapi import CudaGraphConfig, KvCacheConfig, SamplingParams
    from tensorrt_llm.llmapi.llm_args import BaseLlmArgs, TorchLlmArgs, TrtLlmArgs
    import dataclasses

    options = sorted({s for a in parse_arguments()._actions for s in a.option_strings})
    return {
        "version": tensorrt_llm.__version__,
        "source": "extracted from the installed tensorrt_llm package",
        "BaseLlmArgs": sorted(BaseLlmArgs.model_fields), "TorchLlmArgs": sorted(TorchLlmArgs.model_fields),
        "TrtLlmArgs": sorted(TrtLlmArgs.model_fields), "KvCacheConfig": sorted(KvCacheConfig.model_fields),
        "CudaGraphConfig": sorted(CudaGraphConfig.model_fields),
        "SamplingParams": sorted(f.name for f in dataclasses.fields(SamplingParams) if not f.name.startswith("_")),
        "trtllm_build_options": options,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", type=Path, nargs="?")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--trtllm-installed", action="store_true")
    args = parser.parse_args()
    snapshot = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.wheels:
        snapshot["optimum_neuron"] = optimum_neuron(args.wheels)
        snapshot["modelopt"] = modelopt(args.wheels)
    if args.trtllm_installed:
        snapshot["tensorrt_llm"] = {**snapshot.get("tensorrt_llm", {}), **trtllm_installed()}
    args.out.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
