"""The launch examples in scripts/ build requests that botocore's own SageMaker service model
accepts (shapes, required members, types; instance types against the model's enums), and that
match the folders the job entries read. No network: nothing is sent."""

from __future__ import annotations

import json

import botocore.session
import pytest
from botocore.validate import ParamValidator

from lmi_compile.jobs.processing import ProcessingPaths
from script_module import load_script

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/lmi-compile:trtllm"


@pytest.fixture(scope="module")
def sagemaker():
    return botocore.session.get_session().get_service_model("sagemaker")


def _valid(sagemaker, operation: str, request: dict) -> None:
    report = ParamValidator().validate(request, sagemaker.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


def test_optimization_job_request_matches_the_service_model(sagemaker):
    launch = load_script("launch_optimization_job")
    request = launch.optimization_job_request(
        name="llama2-7b-awq", role_arn=ROLE, image=IMAGE, model_s3_uri="s3://b/models/llama-2-7b/",
        output_s3_uri="s3://b/optimized/", instance_type="ml.g5.12xlarge",
        options={"quantize": "awq", "MAX_ROLLING_BATCH_SIZE": "64"}, recipe="job.yaml")
    _valid(sagemaker, "CreateOptimizationJob", request)
    shape = sagemaker.operation_model("CreateOptimizationJob").input_shape
    assert request["DeploymentInstanceType"] in shape.members["DeploymentInstanceType"].enum
    env = request["OptimizationConfigs"][0]["ModelQuantizationConfig"]["OverrideEnvironment"]
    assert env == {"OPTION_QUANTIZE": "awq", "OPTION_MAX_ROLLING_BATCH_SIZE": "64", "LMI_RECIPE": "job.yaml"}

    broken = {**request, "StoppingCondition": {"MaxRuntimeInSeconds": "4h"}}  # the check can fail
    assert ParamValidator().validate(broken, shape).has_errors()


def test_processing_job_request_matches_the_service_model_and_the_entry(sagemaker):
    launch = load_script("launch_processing_job")
    request = launch.processing_job_request(
        name="smollm2-int8", role_arn=ROLE, image=IMAGE, recipe_s3_uri="s3://b/recipes/smollm2-int8.yaml",
        instance_type="ml.g5.2xlarge", model_s3_uri="s3://b/models/smollm2/", output_s3_uri="s3://b/artifacts/")
    _valid(sagemaker, "CreateProcessingJob", request)
    shape = sagemaker.operation_model("CreateProcessingJob").input_shape
    cluster = shape.members["ProcessingResources"].members["ClusterConfig"]
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceType"] in cluster.members["InstanceType"].enum
    # the folders SageMaker fills are the ones `lmi-compile sagemaker-process` reads by default
    paths = ProcessingPaths.from_env({})
    local = {i["InputName"]: i["S3Input"]["LocalPath"] for i in request["ProcessingInputs"]}
    assert local == {"recipe": str(paths.recipe_dir), "model": str(paths.model_dir)}
    output = request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["LocalPath"]
    assert output == str(paths.output_dir) and request["AppSpecification"]["ContainerArguments"] == ["--out", output]
    assert request["AppSpecification"]["ContainerEntrypoint"] == ["lmi-compile", "sagemaker-process"]


def test_print_shows_the_request_without_sending(capsys):
    load_script("launch_optimization_job").main([
        "--name", "n", "--role-arn", ROLE, "--image", IMAGE, "--model", "s3://b/m/", "--output", "s3://b/o/",
        "--instance-type", "ml.p5.48xlarge", "--option", "QUANTIZE=fp8", "--print"])
    assert json.loads(capsys.readouterr().out)["DeploymentInstanceType"] == "ml.p5.48xlarge"
