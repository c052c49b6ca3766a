"""What DRA mode (``allocationApi: dra``) puts in the cluster besides the DaemonSet, as
pulumi-kubernetes input dicts: the DeviceClasses, the driver's RBAC and the admission policy
that keeps its ResourceSlices on its own node.

The driver name and the attribute names come from the plugin (``dra_backend``): a device is
published with ``sku`` and ``cardID`` attributes, which the API server qualifies with the
driver name, so CEL reads them as ``device.attributes["qaic.qualcomm.com"].sku``.

RBAC cannot filter by field, so a ClusterRole grants ResourceSlices cluster-wide and a
ValidatingAdmissionPolicy (the one kubernetes-sigs/dra-example-driver ships, for
``resource.k8s.io/v1``) lets the driver's service account create, update and delete only
slices whose ``spec.nodeName`` is the node its token is bound to: a pod-bound service-account
token carries the node's name in the user's extra ``authentication.kubernetes.io/node-name``
(ServiceAccountTokenPodNodeInfo, on by default since 1.30). It also checks ``spec.driver``:
without that the driver's account could rewrite or delete another driver's slices on its
node (a GPU's, say). Both fields are immutable, so on UPDATE the new object tells for the old.
"""

from __future__ import annotations

import pulumi_kubernetes as k8s

from infra.components.dra_classes import (  # the DeviceClasses live there; names kept here
    ALL_SOCS_CLASS,
    device_classes,
    driver_selector,
    sku_class_name,
    sku_selector,
)
from qaic_device_plugin.dra.backend import DRIVER_NAME

__all__ = ["ALL_SOCS_CLASS", "device_classes", "driver_selector", "sku_class_name",
           "sku_selector"]

#: Attribute names the driver publishes per device (dra_backend.to_device).
ATTR_SKU = "sku"
ATTR_CARD_ID = "cardID"
#: ``matchAttribute`` of a constraint that keeps a request's SoCs on one card.
CARD_ATTRIBUTE = f"{DRIVER_NAME}/{ATTR_CARD_ID}"

#: Objects' names. The DaemonSet in DRA mode is a different object from the device plugin's
#: (see device_plugin.py for why).
DRA_APP_NAME = "qaic-dra-driver"
CLUSTER_ROLE_NAME = "qaic-dra-driver"
SLICE_POLICY_NAME = "qaic-dra-resourceslices"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def cluster_role_rules() -> list[k8s.rbac.v1.PolicyRuleArgsDict]:
    """What the driver calls (kubelet/dra/slices.py, claims.py, claim_status.py): its
    ResourceSlices (the policy below narrows writes to its node), claims it is asked to
    prepare (get only), its entries in their status (server-side apply is a patch: `patch` on
    the status subresource, and the per-driver permission the API server checks for
    `status.devices` since 1.36, DRAResourceClaimGranularStatusAuthorization: verb
    `associated-node:patch` on the synthetic `resourceclaims/driver` named after the driver,
    which holds only for a token bound to a pod on the claim's node, as upstream's example
    driver grants it), and its Node (get: the owner reference that garbage-collects the
    slices with the node)."""
    return [
        {"api_groups": ["resource.k8s.io"], "resources": ["resourceslices"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"api_groups": ["resource.k8s.io"], "resources": ["resourceclaims"], "verbs": ["get"]},
        {"api_groups": ["resource.k8s.io"], "resources": ["resourceclaims/status"],
         "verbs": ["patch"]},
        {"api_groups": ["resource.k8s.io"], "resources": ["resourceclaims/driver"],
         "verbs": ["associated-node:patch"], "resource_names": [DRIVER_NAME]},
        {"api_groups": [""], "resources": ["nodes"], "verbs": ["get"]},
    ]


def service_account_user(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


#: The node the caller's token is bound to ('' if none). ``?extra``: a user without any extra
#: has no ``extra`` key at all, and plain ``.extra`` would fail the evaluation ("no such key")
#: instead of giving the message below (dra-example-driver's policy reads ``.extra``).
USER_NODE = f"request.userInfo.?extra[?'{NODE_NAME_EXTRA}'][0].orValue('')"
#: The slice's node: the old object on DELETE ('' for a slice without a node).
OBJECT_NODE = '(request.operation == "DELETE" ? oldObject : object).spec.?nodeName.orValue("")'
#: The slice's driver: the old object on DELETE.
OBJECT_DRIVER = '(request.operation == "DELETE" ? oldObject : object).spec.driver'
OTHER_DRIVER_MESSAGE = (
    f"\"the qaic DRA driver may only modify resourceslices of driver '{DRIVER_NAME}', not of "
    f"driver '\" + variables.objectDriver + \"'\""
)
NO_NODE_MESSAGE = (
    "no node association found for this user: the qaic DRA driver must run in a pod on a "
    "node, with a service-account token bound to that pod"
)
OTHER_NODE_MESSAGE = (
    "\"this user running on node '\" + variables.userNodeName + \"' may not modify \" + "
    "(variables.objectNodeName == \"\" ? \"cluster resourceslices\" : "
    "\"resourceslices on node '\" + variables.objectNodeName + \"'\")"
)


def slice_policy_spec(
    namespace: str, service_account: str
) -> k8s.admissionregistration.v1.ValidatingAdmissionPolicySpecArgsDict:
    """``spec`` of the ValidatingAdmissionPolicy on ResourceSlices (pulumi input names)."""
    user = service_account_user(namespace, service_account)
    return {
        "failure_policy": "Fail",
        "match_constraints": {"resource_rules": [{
            "api_groups": ["resource.k8s.io"],
            "api_versions": ["v1"],
            "operations": ["CREATE", "UPDATE", "DELETE"],
            "resources": ["resourceslices"],
        }]},
        "match_conditions": [{
            "name": "isQaicDraDriver",
            "expression": f'request.userInfo.username == "{user}"',
        }],
        "variables": [
            {"name": "userNodeName", "expression": USER_NODE},
            {"name": "objectNodeName", "expression": OBJECT_NODE},
            {"name": "objectDriver", "expression": OBJECT_DRIVER},
        ],
        "validations": [
            {"expression": 'variables.userNodeName != ""', "message": NO_NODE_MESSAGE},
            {"expression": "variables.userNodeName == variables.objectNodeName",
             "message_expression": OTHER_NODE_MESSAGE},
            {"expression": f'variables.objectDriver == "{DRIVER_NAME}"',
             "message_expression": OTHER_DRIVER_MESSAGE},
        ],
    }


def slice_binding_spec(
) -> k8s.admissionregistration.v1.ValidatingAdmissionPolicyBindingSpecArgsDict:
    return {"policy_name": SLICE_POLICY_NAME, "validation_actions": ["Deny"]}
