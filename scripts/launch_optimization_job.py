"""Launch a SageMaker optimization job (CreateOptimizationJob) that runs `lmi-compile` in this
project's container: SageMaker mounts the model from S3, the container's entry point sees
SM_NEO_EXECUTION_CONTEXT and runs `lmi-compile sagemaker-optimize`, and the prepared artifact
lands under the output S3 location, deployable as is.

NOT RUN AGAINST AWS from this project (no account here): the request is checked against
botocore's SageMaker service model in tests/jobs/test_launch_scripts.py, without network.

    python scripts/launch_optimization_job.py --name smollm2-int8 \\
        --role-arn arn:aws:iam::123456789012:role/SageMakerRole \\
        --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/lmi-compile:trtllm \\
        --model s3://my-bucket/models/llama-2-7b/ --output s3://my-bucket/optimized/llama-2-7b/ \\
        --instance-type ml.g5.12xlarge --option QUANTIZE=awq --option MAX_ROLLING_BATCH_SIZE=64
    # --print shows the request instead of sending it
"""

from __future__ import annotations

import argparse
import json
from typing import Any

CONFIG_KEYS = {"quantize": "ModelQuantizationConfig", "compile": "ModelCompilationConfig", "shard": "ModelShardingConfig"}


def optimization_job_request(*, name: str, role_arn: str, image: str, model_s3_uri: str, output_s3_uri: str,
                             instance_type: str, options: dict[str, str], recipe: str | None = None,
                             kind: str = "quantize", max_runtime_s: int = 4 * 3600) -> dict[str, Any]:
    """The CreateOptimizationJob request. `options` become OPTION_<NAME> variables (the job's
    OverrideEnvironment, read as LMI reads them); `recipe` is a recipe path inside the model
    (LMI_RECIPE), which then gives every setting."""
    environment = {f"OPTION_{key.upper()}": value for key, value in options.items()}
    if recipe:
        environment["LMI_RECIPE"] = recipe
    return {
        "OptimizationJobName": name,
        "RoleArn": role_arn,
        "ModelSource": {"S3": {"S3Uri": model_s3_uri}},
        "DeploymentInstanceType": instance_type,
        "OptimizationConfigs": [{CONFIG_KEYS[kind]: {"Image": image, "OverrideEnvironment": environment}}],
        "OutputConfig": {"S3OutputLocation": output_s3_uri},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_s},
    }


def _pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option {item!r}: expected NAME=VALUE (e.g. QUANTIZE=awq)")
        pairs[key] = value
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--role-arn", required=True)
    parser.add_argument("--image", required=True, help="ECR URI of Dockerfile.trtllm / Dockerfile.neuron built and pushed")
    parser.add_argument("--model", required=True, help="s3:// prefix of the uncompressed model folder")
    parser.add_argument("--output", required=True, help="s3:// prefix for the prepared artifact")
    parser.add_argument("--instance-type", required=True, help="where the artifact will be served (e.g. ml.g5.12xlarge)")
    parser.add_argument("--option", action="append", default=[], help="NAME=VALUE, sent as OPTION_NAME (repeatable)")
    parser.add_argument("--recipe", help="path of a recipe inside the model folder (LMI_RECIPE)")
    parser.add_argument("--kind", choices=sorted(CONFIG_KEYS), default="quantize")
    parser.add_argument("--max-runtime", type=int, default=4 * 3600, help="seconds")
    parser.add_argument("--region")
    parser.add_argument("--print", action="store_true", help="print the request; send nothing")
    args = parser.parse_args(argv)
    request = optimization_job_request(
        name=args.name, role_arn=args.role_arn, image=args.image, model_s3_uri=args.model, output_s3_uri=args.output,
        instance_type=args.instance_type, options=_pairs(args.option), recipe=args.recipe, kind=args.kind,
        max_runtime_s=args.max_runtime)
    if args.print:
        print(json.dumps(request, indent=1))
        return
    import boto3

    answer = boto3.client("sagemaker", region_name=args.region).create_optimization_job(**request)
    print(answer["OptimizationJobArn"])


if __name__ == "__main__":
    main()
