"""DRA mode's sample claims: one ResourceClaimTemplate per sample (resource.k8s.io/v1).

A template holds one request named ``socs``, which the sample's container names:
- the one-SoC samples: ``exactly`` one device of a SoC class;
- the 4-SoC job: a prioritized list (``firstAvailable``, GA in 1.37), the first that fits:
  a whole Ultra card (one device of the card class: four SoCs of one card, nothing to
  constrain), else four SoCs of one card of any SKU (``matchAttribute`` on the card), else
  four Standard SoCs. With shared SoCs the last two also require four different SoCs
  (``distinctAttribute`` on the PCI address): shares of one SoC could fill a count of four;
- the monitor: with ``adminAccess``, ``allocationMode: All`` of the monitoring class, whose
  one device per node is the driver's view of every SoC of the node (``all-socs``; why not
  All over the SoC devices: infra/components/monitor.py).
Each pod gets its own ResourceClaim made from the template, deleted with the pod.
"""

from __future__ import annotations

import pulumi_kubernetes as k8s

from workloads.samples import CLAIM

#: The 4-SoC job's alternatives, in order (subrequest names: the claim's results say
#: ``socs/card``, ``socs/one-card`` or ``socs/std``).
CARD, ONE_CARD, STANDARD = "card", "one-card", "std"
PCI_ATTRIBUTE = "resource.kubernetes.io/pciBusID"


def claim_template_spec(
    device_class: str, count: int, same_card_attribute: str | None = None
) -> k8s.resource.v1.ResourceClaimTemplateSpecArgsDict:
    """``spec`` of a ResourceClaimTemplate (pulumi-kubernetes input names)."""
    devices: k8s.resource.v1.DeviceClaimArgsDict = {
        "requests": [{
            "name": CLAIM,
            "exactly": {
                "device_class_name": device_class,
                "allocation_mode": "ExactCount",
                "count": count,
            },
        }],
    }
    if same_card_attribute:
        devices["constraints"] = [
            {"requests": [CLAIM], "match_attribute": same_card_attribute},
        ]
    return {"spec": {"devices": devices}}


def four_socs_spec(
    card_class: str, soc_class: str, std_class: str, card_attribute: str, shared: bool = False,
) -> k8s.resource.v1.ResourceClaimTemplateSpecArgsDict:
    """The 4-SoC job's claim: a whole card, else 4 SoCs of one card, else 4 Standard SoCs."""
    alternatives: list[k8s.resource.v1.DeviceSubRequestArgsDict] = [
        {"name": CARD, "device_class_name": card_class, "allocation_mode": "ExactCount",
         "count": 1},
        {"name": ONE_CARD, "device_class_name": soc_class, "allocation_mode": "ExactCount",
         "count": 4},
        {"name": STANDARD, "device_class_name": std_class, "allocation_mode": "ExactCount",
         "count": 4},
    ]
    constraints: list[k8s.resource.v1.DeviceConstraintArgsDict] = [
        {"requests": [f"{CLAIM}/{ONE_CARD}"], "match_attribute": card_attribute}]
    if shared:
        constraints.append({"requests": [f"{CLAIM}/{ONE_CARD}", f"{CLAIM}/{STANDARD}"],
                            "distinct_attribute": PCI_ATTRIBUTE})
    return {"spec": {"devices": {
        "requests": [{"name": CLAIM, "first_available": alternatives}],
        "constraints": constraints,
    }}}


def monitor_claim_spec(monitor_class: str) -> k8s.resource.v1.ResourceClaimTemplateSpecArgsDict:
    """Every SoC of the node, with admin access: in use or not, healthy or not."""
    return {"spec": {"devices": {"requests": [{
        "name": CLAIM,
        "exactly": {
            "device_class_name": monitor_class,
            "allocation_mode": "All",
            "admin_access": True,
        },
    }]}}}
