"""`lmi-compile plan`: decide how to serve a model on given hardware, and say why."""

from __future__ import annotations

import typer
from rich.console import Console

from lmi_compile.plan import plan_json, plan_recipe, print_plan
from lmi_compile.commands.common import (InstanceOption, PropertiesOption, RecipeArgument, printed_warnings,
                                         recipe_and_token)
from lmi_runtime.config import PRECEDENCE_DOC

HELP = f"""Decide backend, tensor-parallel degree, dtype, length limits and the KV-cache budget, each with its reason.

The model comes from RECIPE (a YAML file, see recipes/) or, without one, from the LMI configuration:
HF_MODEL_ID, HF_REVISION, TENSOR_PARALLEL_DEGREE, MAX_BATCH_SIZE, MAX_CONCURRENT_REQUESTS, OPTION_<NAME>
and the TGI/SageMaker aliases, plus a serving.properties given with --properties.
{PRECEDENCE_DOC}

Only config.json is read (a hub id downloads that one file; HF_TOKEN for gated models).
The hardware is this machine, probed (NVIDIA GPUs, Neuron devices, else the CPU), or the SageMaker
instance type given with --for (e.g. ml.g5.12xlarge, ml.p4d.24xlarge, ml.inf2.48xlarge)."""


def plan(
    recipe: RecipeArgument = None,
    properties: PropertiesOption = None,
    instance_type: InstanceOption = None,
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (stable keys) instead of a table."),
) -> None:
    with printed_warnings():
        chosen, token = recipe_and_token(recipe, properties)
        result = plan_recipe(chosen, instance_type=instance_type, token=token)
    if as_json:
        typer.echo(plan_json(result))
    else:
        print_plan(result, Console())
