"""DRA mode's sample claims: one ResourceClaimTemplate per sample (resource.k8s.io/v1).

A template holds one request named ``socs``: ``exactly`` ``count`` devices of a DeviceClass.
The 4-SoC job's template adds a constraint that all four share one value of the card
attribute (``matchAttribute``), so the scheduler only allocates four SoCs of one card.
Each pod gets its own ResourceClaim made from the template, deleted with the pod.
"""

from __future__ import annotations

import pulumi_kubernetes as k8s

from workloads.samples import CLAIM


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
