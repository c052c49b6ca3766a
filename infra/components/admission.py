"""SKU mode's one-resource-per-container rule, as a ValidatingAdmissionPolicy.

kubelet calls Allocate once per extended resource of a container, and each reply sets its own
``QAIC_VISIBLE_DEVICES``; kubelet keeps only one of them. A container asking for
``qualcomm.com/qaic-ultra`` and ``qualcomm.com/qaic-pro`` would run with SoCs it cannot see.
The API server refuses such a pod before it runs (admissionregistration.k8s.io/v1, GA in
Kubernetes 1.30). SKU mode off offers one resource, so the rule is only deployed in SKU mode.
"""

from __future__ import annotations

import pulumi_kubernetes as k8s

from qaic_device_plugin.config.contracts import RESOURCE_PREFIX

POLICY_NAME = "qaic-one-resource-per-container"


def policy_name(namespace: str) -> str:
    """The policy's (and its binding's) name for the stack deploying into `namespace`. Two
    stacks in SKU mode on one cluster (two node pools) each own a copy with the same rule,
    so destroying one stack leaves the other's in place; both deny the same pods."""
    return f"{POLICY_NAME}-{namespace}"

#: One container's qaic resource names, requests and limits together (keys may repeat).
_NAMES = (
    "((has(c.resources) && has(c.resources.requests) ? "
    f"c.resources.requests.filter(k, k.startsWith('{RESOURCE_PREFIX}')) : []) + "
    "(has(c.resources) && has(c.resources.limits) ? "
    f"c.resources.limits.filter(k, k.startsWith('{RESOURCE_PREFIX}')) : []))"
)
#: Every container, init containers included (they allocate SoCs the same way).
CONTAINERS = (
    "object.spec.containers + "
    "(has(object.spec.initContainers) ? object.spec.initContainers : [])"
)
#: True when no container names two different qaic resources.
EXPRESSION = f"variables.containers.all(c, {_NAMES}.all(a, {_NAMES}.all(b, a == b)))"
MESSAGE = (
    f"a container may request only one {RESOURCE_PREFIX}* resource: kubelet would set "
    "QAIC_VISIBLE_DEVICES from one of them only, hiding the other SoCs from the runtime. "
    "Ask for SoCs of one SKU per container, or put each SKU in a container of its own."
)


def policy_spec() -> k8s.admissionregistration.v1.ValidatingAdmissionPolicySpecArgsDict:
    """``spec`` of the ValidatingAdmissionPolicy (pulumi-kubernetes input names)."""
    return {
        "failure_policy": "Fail",
        "match_constraints": {
            "resource_rules": [{
                "api_groups": [""],
                "api_versions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["pods"],
            }],
        },
        "variables": [{"name": "containers", "expression": CONTAINERS}],
        "validations": [{"expression": EXPRESSION, "message": MESSAGE, "reason": "Invalid"}],
    }


def binding_spec(name: str = POLICY_NAME,
                 ) -> k8s.admissionregistration.v1.ValidatingAdmissionPolicyBindingSpecArgsDict:
    return {"policy_name": name, "validation_actions": ["Deny"]}
