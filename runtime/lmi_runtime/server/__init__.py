"""The HTTP layer: SageMaker (/ping, /invocations with the LMI schema), OpenAI-compatible
endpoints and /metrics, on FastAPI."""
