#!/bin/sh
# Entry point of Dockerfile.trtllm / Dockerfile.neuron. SageMaker starts the container with the
# single argument `serve` (and mounts the model at /opt/ml/model, read-only); any other command
# runs as given, e.g. `docker run IMAGE lmi-compile run recipe.yaml`. A SageMaker optimization
# job sets SM_NEO_EXECUTION_CONTEXT (as for LMI's images): then the job's entry runs instead.
set -e
if [ -n "$SM_NEO_EXECUTION_CONTEXT" ]; then
  exec lmi-compile sagemaker-optimize
fi
if [ "$#" -eq 0 ] || [ "$1" = "serve" ]; then
  [ "$#" -gt 0 ] && shift
  exec lmi-serve --host 0.0.0.0 --port "${SAGEMAKER_BIND_TO_PORT:-8080}" "$@"
fi
exec "$@"
