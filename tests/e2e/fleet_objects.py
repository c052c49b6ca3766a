"""What the fleet tests create, in a namespace of their own: DRA claims, claim templates,
pods and Jobs, and device-plugin pods (tests/e2e/test_fleet.py)."""

from __future__ import annotations

import json
from typing import Any

from cluster.controlplane import ControlPlane
from workloads.samples import LOOP, QAIC_GROUP_ID, SHOW, WORKLOAD_UID, show_command

Obj = dict[str, Any]
DRIVER = "qaic.qualcomm.com"
NS = "fleet-jobs"
ULTRA_CLASS = f"ultra.{DRIVER}"
CARD_ATTR = f"{DRIVER}/cardID"
HOSTNAME = "kubernetes.io/hostname"


def request(count: int, card: str | None = None) -> Obj:
    """`count` Ultra SoCs; `card`: only that card's (a CEL selector on the cardID)."""
    exactly: Obj = {"deviceClassName": ULTRA_CLASS, "count": count}
    if card is not None:
        exactly["selectors"] = [{"cel": {
            "expression": f'device.attributes["{DRIVER}"].cardID == "{card}"'}}]
    return {"name": "socs", "exactly": exactly}


def claim_spec(count: int, card: str | None = None, same_card: bool = False) -> Obj:
    devices: Obj = {"requests": [request(count, card)]}
    if same_card:
        devices["constraints"] = [{"requests": ["socs"], "matchAttribute": CARD_ATTR}]
    return {"devices": devices}


def claim(name: str, spec: Obj) -> Obj:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def claim_template(name: str, spec: Obj) -> Obj:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": name, "namespace": NS}, "spec": {"spec": spec}}


def pod_spec(claim_ref: Obj, node: str | None = None) -> Obj:
    """A restricted-level pod that shows its SoCs and stays until SIGTERM (exits 0 on it)."""
    spec: Obj = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "runAsUser": WORKLOAD_UID,
                            "runAsGroup": QAIC_GROUP_ID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "resourceClaims": [{"name": "socs", **claim_ref}],
        "containers": [{
            "name": "qaic", "image": "localhost/qaic-sample:e2e", "imagePullPolicy": "Never",
            "command": show_command(stay=True), "resources": {"claims": [{"name": "socs"}]},
            "securityContext": {"allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
        }],
    }
    if node is not None:
        spec["nodeSelector"] = {HOSTNAME: node}
    return spec


def pod(name: str, claim_name: str, node: str | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": pod_spec({"resourceClaimName": claim_name}, node)}


def job(name: str, template: str) -> Obj:
    """A long job whose pods claim from `template`; an eviction (a drain) is not a failure
    of the job: its pod is replaced, not counted against the backoff limit. Stopped by a
    signal, the container fails (143) as an interrupted job does: exit 0 would complete it."""
    spec = pod_spec({"resourceClaimTemplateName": template})
    spec["containers"][0]["command"] = ["/bin/sh", "-c", f"trap 'exit 143' TERM; {SHOW}; {LOOP}"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
            "spec": {
                "backoffLimit": 2,
                "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [
                    {"type": "DisruptionTarget"}]}]},
                "template": {"metadata": {"labels": {"job": name}}, "spec": spec},
            }}


def create(cluster: ControlPlane, *objs: Obj) -> None:
    cluster.kubectl("create", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": list(objs)}))




def extended_pod(name: str, resource: str, count: int, node_selector: dict[str, str]) -> Obj:
    """Device-plugin mode: a pod holding `count` of an extended resource, staying until
    SIGTERM."""
    spec = pod_spec({"resourceClaimName": "unused"})
    del spec["resourceClaims"]
    spec["containers"][0]["resources"] = {"limits": {resource: str(count)}}
    spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": spec}
