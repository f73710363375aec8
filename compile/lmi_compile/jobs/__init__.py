"""Entries for SageMaker jobs: the optimization-job contract (`SM_NEO_*`) and processing jobs."""
