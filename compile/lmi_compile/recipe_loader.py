"""Recipes from YAML files or from an LMI deployment's configuration.

A recipe key we do not know is a warning naming the nearest known key (at any depth) and is
dropped; a bad value is a ConfigError naming the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from lmi_compile.recipe import Recipe
from lmi_runtime.config import ServingConfig, warn_unknown
from lmi_runtime.config.text import read_utf8
from lmi_runtime.errors import ConfigError

SectionT = TypeVar("SectionT", bound=BaseModel)

# LMI's option.rolling_batch → recipe target backend.
_BACKENDS = {"auto": "auto", "torch": "torch", "trtllm": "trtllm", "neuron": "neuron", "disable": "auto"}


def load_recipe(path: Path | str) -> Recipe:
    path = Path(path)
    return recipe_from_dict(read_recipe_file(path), where=path.name)


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes
MAX_YAML_VALUES = 10_000  # values after alias expansion: a recipe has a few dozen


def read_recipe_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in `path`, with a clear error for a missing, unreadable, non-UTF-8,
    oversized or non-mapping file."""
    if path.is_file() and path.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"recipe {path} is {path.stat().st_size} bytes; a recipe is at most {MAX_RECIPE_BYTES}",
                          hint="pass a recipe YAML file (see recipes/)")
    text = read_utf8(path, f"recipe {path}", "a recipe YAML file (see recipes/)")
    data = load_yaml(text, f"recipe {path}")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (source, quantize, target, ...)",
                          hint="see recipes/smollm2-int8.yaml for the layout")
    return data


def load_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with a budget: a document whose aliases expand to more than
    MAX_YAML_VALUES values (a "billion laughs" bomb) is refused before it is built, so it can
    neither hang a validator nor be printed in an error."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_YAML_VALUES} values through YAML aliases (&anchor / *alias)",
                              hint="write the values out; recipes do not need aliases that multiply")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {str(err)[:300]}", hint="check indentation and quoting") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply", hint="a recipe is a few levels deep; check the file") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """How many values `node` stands for once every alias is expanded (memoised, so counting
    a bomb is as cheap as reading it)."""
    if id(node) in memo:
        return memo[id(node)]
    if isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(item, memo) for item in node.value)
    else:
        total = 1
    memo[id(node)] = total
    return total


def recipe_from_dict(data: dict[str, Any], where: str = "recipe") -> Recipe:
    return section_from_dict(Recipe, data, where)


def section_from_dict(model: type[SectionT], data: dict[str, Any], where: str) -> SectionT:
    """Validate `data` as `model` (the whole recipe or one section): unknown keys warn and are
    dropped, bad values become one ConfigError naming every offending dotted key."""
    cleaned = _drop_unknown(data, model, where, prefix="")
    try:
        return model.model_validate(cleaned)
    except ValidationError as err:
        raise _recipe_error(err, where) from None


def recipe_from_serving_config(config: ServingConfig) -> Recipe:
    """Map an LMI deployment (environment / serving.properties) onto a recipe."""
    if not config.model_id:
        raise ConfigError("no model to prepare: the configuration has no model id",
                          hint="set HF_MODEL_ID (or option.model_id in serving.properties), or pass a recipe file")
    quantize: dict[str, Any] = {"method": config.quantize}
    if config.quantize == "awq":  # LMI/AutoAWQ defaults: 4 bits, group 128, zero point
        quantize.update(bits=4, group_size=128, symmetric=False)
    elif config.quantize == "gptq":
        quantize.update(bits=4, group_size=128)
    total = config.n_positions
    data = {
        "name": _name_from(config.model_id),
        "source": {"uri": config.model_id, "revision": config.revision,
                   "trust_remote_code": config.trust_remote_code},
        "quantize": quantize,
        "target": {"backend": _BACKENDS[config.rolling_batch], "dtype": config.dtype,
                   "tp_degree": config.tensor_parallel_degree, "pp_degree": config.pipeline_parallel_degree},
        "limits": {"max_batch_size": config.max_rolling_batch_size,
                   "max_concurrent_requests": config.job_queue_size,
                   "max_input_len": config.max_input_len, "max_output_len": config.max_output_len,
                   "max_total_len": total, "max_num_tokens": config.max_rolling_batch_prefill_tokens,
                   "gpu_memory_utilization": config.gpu_memory_utilization},
    }
    return recipe_from_dict(data, where="the serving configuration")


def _name_from(model_id: str) -> str:
    tail = model_id.rstrip("/").split("/")[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for arg in get_args(annotation):
            found = _section_model(arg)
            if found:
                return found
    return None


def _drop_unknown(data: dict[str, Any], model: type[BaseModel], where: str, prefix: str) -> dict[str, Any]:
    """Copy `data` without keys `model` does not define, warning about each (recursively)."""
    fields = model.model_fields
    kept: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            warn_unknown(dotted, (f"{prefix}{name}" for name in fields), where)
            continue
        section = _section_model(fields[key].annotation)
        kept[key] = _drop_unknown(value, section, where, f"{dotted}.") if section and isinstance(value, dict) else value
    return kept


_UNION_TAG = re.compile(r"^(int|str|float|bool|none|.*[^a-z0-9_].*)$")


def _recipe_error(err: ValidationError, where: str) -> ConfigError:
    """One line per offending key; the alternatives of a union (`4` or `'max'`) on one line."""
    problems: dict[str, list[str]] = {}
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"] if not _UNION_TAG.match(str(p))) or "recipe"
        expected = item.get("ctx", {}).get("expected")
        message = f"allowed: {expected}" if expected else item["msg"].removeprefix("Value error, ")
        shown = f" = {_short(item['input'])}" if item["type"] != "missing" and not isinstance(item["input"], dict) else ""
        problems.setdefault(f"{path}{shown}", []).append(message)
    text = "; ".join(f"{key}: {' or '.join(messages)}" for key, messages in problems.items())
    return ConfigError(f"invalid {where}: {text}", hint="fix the value(s) above (see recipes/ for working examples)")


def _short(value: Any, limit: int = 80) -> str:
    """A value as the error shows it: repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"
