"""The layers, read from the source with `ast` (an import map, as farm-studio draws it):
the runtime never imports the pipeline; the engine core never imports a backend or the HTTP
server (backends plug into the engine's contracts); no planning module lives in the slim
runtime; and the pipeline uses only the runtime's public names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime" / "lmi_runtime"
COMPILE = REPO / "compile" / "lmi_compile"
PLANNING = {"modelspec", "instances", "planner"}


def module_name(path: Path) -> str:
    root = RUNTIME.parent if path.is_relative_to(RUNTIME) else COMPILE.parent
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) of every import in `path` (module `module`),
    relative ones resolved; imports inside functions count too (a lazy import is still a
    dependency)."""
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found += [(module, alias.name, node.lineno) for alias in node.names]
    return found


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(root: Path, rule) -> list[str]:
    out = []
    for path in sources(root):
        importer = module_name(path)
        for module, name, line in imports(path, importer):
            problem = rule(importer, module, name)
            if problem:
                out.append(f"{path.relative_to(REPO)}:{line}: {problem}")
    return out


def runtime_rule(importer: str, module: str, name: str | None) -> str | None:
    if within(module, "lmi_compile"):
        return f"the runtime imports the pipeline ({module})"
    if within(importer, "lmi_runtime.engine"):
        for layer in ("lmi_runtime.backends", "lmi_runtime.server"):
            if within(module, layer) or (module == "lmi_runtime" and name == layer.split(".")[1]):
                return f"the engine imports {layer} (backends depend on the engine, not the reverse)"
    return None


def compile_rule(importer: str, module: str, name: str | None) -> str | None:
    if not within(module, "lmi_runtime"):
        return None
    private = any(part.startswith("_") and not part.endswith("__") for part in [*module.split("."), name or ""])
    return f"private runtime name {module}{'.' + name if name else ''}" if private else None


def test_the_runtime_never_imports_the_pipeline_and_the_engine_no_backend():
    assert violations(RUNTIME, runtime_rule) == []


def test_the_pipeline_uses_only_public_runtime_names():
    assert violations(COMPILE, compile_rule) == []


def test_no_planning_module_in_the_runtime():
    assert [p.relative_to(REPO).as_posix() for p in sources(RUNTIME) if p.stem in PLANNING] == []


@pytest.mark.parametrize(("importer", "module", "name", "caught"), [
    ("lmi_runtime.engine.engine", "lmi_runtime.backends.torch_llama", "TorchLlamaBackend", True),
    ("lmi_runtime.engine.engine", "lmi_runtime", "server", True),
    ("lmi_runtime.backends.loader", "lmi_runtime.engine.config", "EngineConfig", False),
    ("lmi_runtime.cli", "lmi_compile.plan", "make_plan", True),
])
def test_the_runtime_rule_catches_a_violation(importer, module, name, caught):
    assert (runtime_rule(importer, module, name) is not None) == caught


def test_relative_imports_are_resolved(tmp_path):
    assert module_name(RUNTIME / "engine" / "engine.py") == "lmi_runtime.engine.engine"
    assert module_name(RUNTIME / "engine" / "__init__.py") == "lmi_runtime.engine"
    source = tmp_path / "scheduler.py"
    source.write_text("from ..backends import loader\nfrom .request import Sequence\n")
    found = imports(source, "lmi_runtime.engine.scheduler")
    assert found == [("lmi_runtime.backends", "loader", 1), ("lmi_runtime.engine.request", "Sequence", 2)]
    assert runtime_rule("lmi_runtime.engine.scheduler", *found[0][:2])


def test_the_private_name_rule():
    assert compile_rule("lmi_compile.plan.planner", "lmi_runtime.kernels.paged_attention", "_triton_paged_attention")
    assert compile_rule("lmi_compile.plan.planner", "lmi_runtime.hardware", "probe") is None
    assert compile_rule("lmi_compile.cli", "lmi_runtime", "__version__") is None
