"""The objects of a scale run, as the API takes them (plain dicts): fake nodes, the job pods of
both modes, and DRA mode's DeviceClasses and ResourceClaimTemplates.

- Nodes: 64 CPUs and 512 GiB for 16 SoCs, so a job asks 4 CPUs and 32 GiB per SoC. That is
  bench/cluster/simulation.py's model of kube-scheduler's default scoring (LeastAllocated over
  CPU and memory; devices are not scored), now with the real scheduler doing it. Device-plugin
  mode adds `qualcomm.com/qaic: 16` (the plugin's default resource, SKU mode off) to capacity
  and allocatable, as kubelet would once our plugin registered.
- DRA mode: the DeviceClasses exactly as the stack creates them (infra/components/
  dra_objects.py), and one ResourceClaimTemplate per job size with one request `socs` of
  `count` devices of the all-SoCs class; the 4-SoC template adds the stack's one-card
  constraint (`matchAttribute: qaic.qualcomm.com/cardID`, as workloads/dra_claims.py), the
  2-SoC one does not (like the device plugin's `prefer` policy).
"""

from __future__ import annotations

from typing import Any

from infra.components.dra_classes import card_class_name
from infra.components.dra_objects import ALL_SOCS_CLASS, CARD_ATTRIBUTE, device_classes
from workloads.samples import CLAIM

from .kwok import ANNOTATION

Json = dict[str, Any]

NAMESPACE = "scale"
RESOURCE = "qualcomm.com/qaic"
NODE_CPU, NODE_MEM_GI, NODE_PODS = 64, 512, 110
CPU_PER_SOC, MEM_GI_PER_SOC = 4, 32
ONE_CARD_SIZES = (4,)  # the job sizes whose template carries the one-card constraint
#: How a 4-SoC job asks for its card: four SoCs with the one-card constraint (the stack's
#: template), or one device of the whole-Ultra-card class (the driver's card devices)
FOUR_SOC_CONSTRAINT, FOUR_SOC_CARD = "constraint", "card"
IMAGE = "registry.invalid/qaic-job:1"  # never pulled: kwok runs no containers


def node(name: str, socs: int, *, extended: bool) -> Json:
    """A kwok node; its status is written on create (kwok's init stage keeps what is there)."""
    res = {"cpu": str(NODE_CPU), "memory": f"{NODE_MEM_GI}Gi", "pods": str(NODE_PODS)}
    if extended:
        res[RESOURCE] = str(socs)
    key, value = ANNOTATION
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {key: value},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": name}},
        "status": {"capacity": dict(res), "allocatable": dict(res)},
    }


def template_name(size: int) -> str:
    return f"qaic-{size}soc"


def claim_template(size: int, four_soc: str = FOUR_SOC_CONSTRAINT) -> Json:
    if size == 4 and four_soc == FOUR_SOC_CARD:
        cls, count = card_class_name("ultra"), 1
    else:
        cls, count = ALL_SOCS_CLASS, size
    devices: Json = {"requests": [{"name": CLAIM, "exactly": {
        "deviceClassName": cls, "allocationMode": "ExactCount", "count": count}}]}
    if size in ONE_CARD_SIZES and count > 1:
        devices["constraints"] = [{"requests": [CLAIM], "matchAttribute": CARD_ATTRIBUTE}]
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": template_name(size), "namespace": NAMESPACE},
        "spec": {"spec": {"devices": devices}},
    }


def classes() -> list[Json]:
    return [{"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
             "metadata": {"name": name}, "spec": spec} for name, spec in device_classes()]


def pod(name: str, size: int, *, dra: bool) -> Json:
    requests: Json = {"cpu": str(CPU_PER_SOC * size), "memory": f"{MEM_GI_PER_SOC * size}Gi"}
    resources: Json = {"requests": requests}
    spec: Json = {
        "containers": [{"name": "job", "image": IMAGE, "resources": resources}],
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    if dra:
        resources["claims"] = [{"name": CLAIM}]
        spec["resourceClaims"] = [{"name": CLAIM,
                                   "resourceClaimTemplateName": template_name(size)}]
    else:
        resources["limits"] = {RESOURCE: str(size)}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"app": "qaic-scale", "socs": str(size)}},
        "spec": spec,
    }
