"""The seed's sample workloads, as typed pulumi-kubernetes specs.

- pod example: one SoC; shows what it was given, then stays up (the SDK's
  examples/pod-example.yml, kept running so `pulumi up` can await it Ready);
- deployment: one replica holding one SoC, ``runAsGroup`` of the ``qaic`` group (995) so
  the runtime tools work unprivileged (deploy-qaic-single.yaml);
- monitor (DRA mode): a DaemonSet whose pods see every SoC of their node without taking one
  (an adminAccess claim), in a namespace of its own;
- 4-SoC job: asks for four SoCs in one pod, shows them and completes. One Ultra card carries
  four SoCs behind its on-card PCIe switch, so with SKU mode on it asks for
  ``qualcomm.com/qaic-ultra: 4`` and fits exactly one Ultra card.

In DRA mode (``claim_template`` set) a sample asks for no extended resource: its pod names
the ResourceClaimTemplate of the same name (:mod:`workloads.dra_claims`) as claim ``socs``
and its container uses that claim; the driver's CDI spec sets ``QAIC_VISIBLE_DEVICES`` and
adds the ``/dev/accel`` nodes.

Every command is plain POSIX sh (busybox is enough): it prints ``QAIC_VISIBLE_DEVICES`` and
``ls -l /dev/accel``, runs ``qaic-util -q`` when the image has it, and a long-running one
exits at once on SIGTERM (a shell as PID 1 ignores it unless it traps it; ``sleep`` runs in
the background so the trap fires without waiting for it).

Every spec passes the ``restricted`` Pod Security level: non-root, no privilege
escalation, all capabilities dropped, RuntimeDefault seccomp.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi_kubernetes as k8s

QAIC_GROUP_ID = 995  # the `qaic` group on AI 100 hosts and in the SDK images
WORKLOAD_UID = 1000
QAIC_UTIL = "/opt/qti-aic/tools/qaic-util"
#: Attempts of the 4-SoC job: with QAIC_MULTI_SOC_POLICY=require a pod whose SoCs would span
#: cards fails admission (UnexpectedAdmissionError) and the Job controller starts another.
ULTRA_JOB_BACKOFF_LIMIT = 6
#: Names of the samples (in DRA mode also of their ResourceClaimTemplates).
POD_EXAMPLE = "qaic-pod-example"
DEPLOYMENT = "qaic-inference"
ULTRA_JOB = "qaic-ultra-4soc"
MONITOR = "qaic-monitor"
#: The pod's claim name (DRA mode), and the request name in its template.
CLAIM = "socs"

SHOW = (
    'echo "QAIC_VISIBLE_DEVICES=${QAIC_VISIBLE_DEVICES:-}"; ls -l /dev/accel; '
    f"if [ -x {QAIC_UTIL} ]; then {QAIC_UTIL} -q; fi"
)
TRAP = "trap 'exit 0' TERM"
LOOP = "while true; do sleep 1 & wait $!; done"


def show_command(stay: bool) -> list[str]:
    """``sh -c`` that shows the SoCs given; ``stay`` keeps it running until SIGTERM."""
    return ["/bin/sh", "-c", f"{TRAP}; {SHOW}; {LOOP}" if stay else SHOW]


@dataclass(frozen=True)
class WorkloadParams:
    resource_name: str
    image: str
    namespace: str
    image_pull_policy: str = "IfNotPresent"
    tolerations: list[dict[str, str]] = field(default_factory=list)
    #: DRA mode: the ResourceClaimTemplate the pod claims its SoCs from (no extended resource).
    claim_template: str | None = None


def _labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/part-of": "qaic-k8s-samples",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def _pod_security() -> k8s.core.v1.PodSecurityContextArgsDict:
    return {
        "run_as_non_root": True,
        "run_as_user": WORKLOAD_UID,
        "run_as_group": QAIC_GROUP_ID,
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def _container(
    params: WorkloadParams, socs: int, command: list[str]
) -> k8s.core.v1.ContainerArgsDict:
    amount = str(socs)
    resources: k8s.core.v1.ResourceRequirementsArgsDict
    if params.claim_template:
        resources = {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
            "claims": [{"name": CLAIM}],
        }
    else:
        resources = {
            # Extended resources: requests must equal limits.
            "requests": {params.resource_name: amount, "cpu": "100m", "memory": "256Mi"},
            "limits": {params.resource_name: amount, "memory": "1Gi"},
        }
    return {
        "name": "qaic",
        "image": params.image,
        "image_pull_policy": params.image_pull_policy,
        "command": command,
        "resources": resources,
        "security_context": {
            "allow_privilege_escalation": False,
            "capabilities": {"drop": ["ALL"]},
            "read_only_root_filesystem": False,
            "run_as_non_root": True,
        },
    }


def _pod(
    params: WorkloadParams, socs: int, command: list[str], restart: str
) -> k8s.core.v1.PodSpecArgsDict:
    spec: k8s.core.v1.PodSpecArgsDict = {
        "restart_policy": restart,
        "security_context": _pod_security(),
        "tolerations": params.tolerations,  # type: ignore[typeddict-item]
        "automount_service_account_token": False,
        "containers": [_container(params, socs, command)],
    }
    if params.claim_template:
        spec["resource_claims"] = [
            {"name": CLAIM, "resource_claim_template_name": params.claim_template}
        ]
    return spec


def pod_example_spec(params: WorkloadParams) -> tuple[str, k8s.core.v1.PodSpecArgsDict]:
    """Name and spec of the one-SoC pod example."""
    return POD_EXAMPLE, _pod(params, 1, show_command(stay=True), "Never")


def deployment_spec(
    params: WorkloadParams,
) -> tuple[str, k8s.apps.v1.DeploymentSpecArgsDict]:
    """Name and spec of the single-replica, one-SoC deployment."""
    name = DEPLOYMENT
    command = show_command(stay=True)
    return name, {
        "replicas": 1,
        "selector": {"match_labels": {"app.kubernetes.io/name": name}},
        "strategy": {"type": "Recreate"},  # a SoC is never shared by old and new pod
        "template": {
            "metadata": {"labels": _labels(name)},
            "spec": _pod(params, 1, command, "Always"),
        },
    }


def ultra_job_spec(params: WorkloadParams) -> tuple[str, k8s.batch.v1.JobSpecArgsDict]:
    """Name and spec of the 4-SoC job that only fits one Ultra card."""
    name = ULTRA_JOB
    return name, {
        # No ttlSecondsAfterFinished: Pulumi owns the Job, and one deleted behind its back
        # would break the next `pulumi up`.
        "backoff_limit": ULTRA_JOB_BACKOFF_LIMIT,
        "active_deadline_seconds": 900,
        "template": {
            "metadata": {"labels": _labels(name)},
            "spec": _pod(params, 4, show_command(stay=False), "Never"),
        },
    }


def monitor_spec(
    params: WorkloadParams, node_selector: Mapping[str, str] | None = None,
) -> tuple[str, k8s.apps.v1.DaemonSetSpecArgsDict]:
    """Name and spec of the monitoring DaemonSet (DRA mode only): one pod per node that sees
    every SoC of its node through an adminAccess claim (``params.claim_template``) and takes
    none; it shows them and stays up, where an exporter would serve its metrics."""
    name = MONITOR
    pod = _pod(params, 0, show_command(stay=True), "Always")
    if node_selector:
        pod["node_selector"] = dict(node_selector)  # the driver's nodes
    return name, {
        "selector": {"match_labels": {"app.kubernetes.io/name": name}},
        "template": {"metadata": {"labels": _labels(name)}, "spec": pod},
    }


def versioned(name: str, spec: Mapping[str, Any]) -> str:
    """``name-<8 hex of the spec>``: the name of an object whose spec is immutable (Pod, Job).

    A changed spec then means a new name, so the provider's preview of the replacement is a
    dry-run create of an object that does not exist yet, which the API server accepts. With
    a fixed name it is an update of the running pod, which it refuses ("pod updates may not
    change fields other than ..."), and a changed stack needed three `pulumi up` runs
    (issue 13 item 10). The same spec keeps the same name: renders stay stable for GitOps.
    """
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
    return f"{name}-{digest[:8]}"


def unversioned(name: str) -> str:
    """The sample's name without the spec hash `versioned` adds."""
    return re.sub(r"-[0-9a-f]{8}$", "", name)


def labels_for(name: str) -> dict[str, str]:
    return _labels(name)
