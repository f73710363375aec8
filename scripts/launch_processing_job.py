"""Launch a SageMaker processing job (CreateProcessingJob) that runs `lmi-compile
sagemaker-process` in this project's container: the recipe (and optionally the model) are
copied from S3 under /opt/ml/processing/input/, the job logs one line per stage to CloudWatch,
and the artifact is published by the job itself when the recipe's output is s3:// (manifest
last), else uploaded by SageMaker from /opt/ml/processing/output/artifact/ to --output.

NOT RUN AGAINST AWS from this project (no account here): the request is checked against
botocore's SageMaker service model in tests/jobs/test_launch_scripts.py, without network.

    python scripts/launch_processing_job.py --name smollm2-int8 \\
        --role-arn arn:aws:iam::123456789012:role/SageMakerRole \\
        --image 123456789012.dkr.ecr.us-east-1.amazonaws.com/lmi-compile:trtllm \\
        --recipe s3://my-bucket/recipes/llama2-7b-awq-g5.yaml --instance-type ml.g5.12xlarge
    # --print shows the request instead of sending it
"""

from __future__ import annotations

import argparse
import json
from typing import Any

ROOT = "/opt/ml/processing"


def _input(name: str, uri: str) -> dict[str, Any]:
    return {"InputName": name, "S3Input": {"S3Uri": uri, "LocalPath": f"{ROOT}/input/{name}",
                                           "S3DataType": "S3Prefix", "S3InputMode": "File"}}


def processing_job_request(*, name: str, role_arn: str, image: str, recipe_s3_uri: str, instance_type: str,
                           model_s3_uri: str | None = None, output_s3_uri: str | None = None,
                           volume_gb: int = 200, max_runtime_s: int = 4 * 3600,
                           environment: dict[str, str] | None = None) -> dict[str, Any]:
    """The CreateProcessingJob request. Without `output_s3_uri` the recipe's own s3:// output is
    used (the job publishes there itself)."""
    request: dict[str, Any] = {
        "ProcessingJobName": name,
        "RoleArn": role_arn,
        "AppSpecification": {"ImageUri": image, "ContainerEntrypoint": ["lmi-compile", "sagemaker-process"]},
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": instance_type,
                                                  "VolumeSizeInGB": volume_gb}},
        "ProcessingInputs": [_input("recipe", recipe_s3_uri)] + ([_input("model", model_s3_uri)] if model_s3_uri else []),
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime_s},
        "Environment": environment or {},
    }
    if output_s3_uri:  # the job writes into the output folder, which SageMaker uploads at the end
        request["AppSpecification"]["ContainerArguments"] = ["--out", f"{ROOT}/output/artifact"]
        request["ProcessingOutputConfig"] = {"Outputs": [{"OutputName": "artifact", "S3Output": {
            "S3Uri": output_s3_uri, "LocalPath": f"{ROOT}/output/artifact", "S3UploadMode": "EndOfJob"}}]}
    return request


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--role-arn", required=True)
    parser.add_argument("--image", required=True, help="ECR URI of Dockerfile.trtllm / Dockerfile.neuron built and pushed")
    parser.add_argument("--recipe", required=True, help="s3:// URI of the recipe YAML (or a prefix holding only it)")
    parser.add_argument("--model", help="s3:// prefix of a model folder to use instead of the recipe's source")
    parser.add_argument("--output", help="s3:// prefix; default: the recipe's own s3:// output")
    parser.add_argument("--instance-type", required=True, help="e.g. ml.g5.12xlarge (quantize on the GPU family you serve on)")
    parser.add_argument("--volume-gb", type=int, default=200, help="disk for the model, the stage cache and the artifact")
    parser.add_argument("--max-runtime", type=int, default=4 * 3600, help="seconds")
    parser.add_argument("--region")
    parser.add_argument("--print", action="store_true", help="print the request; send nothing")
    args = parser.parse_args(argv)
    request = processing_job_request(
        name=args.name, role_arn=args.role_arn, image=args.image, recipe_s3_uri=args.recipe,
        instance_type=args.instance_type, model_s3_uri=args.model, output_s3_uri=args.output,
        volume_gb=args.volume_gb, max_runtime_s=args.max_runtime)
    if args.print:
        print(json.dumps(request, indent=1))
        return
    import boto3

    answer = boto3.client("sagemaker", region_name=args.region).create_processing_job(**request)
    print(answer["ProcessingJobArn"])


if __name__ == "__main__":
    main()
