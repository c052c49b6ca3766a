"""Typed sample AI 100 workloads, parameterised by the extended resource to ask for."""

from workloads.samples import (
    QAIC_GROUP_ID,
    WorkloadParams,
    deployment_spec,
    pod_example_spec,
    ultra_job_spec,
)

__all__ = [
    "QAIC_GROUP_ID",
    "WorkloadParams",
    "deployment_spec",
    "pod_example_spec",
    "ultra_job_spec",
]
