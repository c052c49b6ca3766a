"""DraDriver: what ``allocationApi: dra`` deploys. The DeviceClasses (every SoC, and one per
SKU), the driver's ClusterRole and binding, the ResourceSlice admission policy and its
binding, the DaemonSet running the plugin image in DRA mode (pod: :mod:`dra_pod`), and in SKU
mode the one-card rule for pods written for device-plugin mode (:mod:`one_card`).

Specs are in :mod:`infra.components.dra_objects`. The DaemonSet depends on the RBAC and the
policy, so it starts with its permissions in place and, on a switch back to device-plugin
mode, is deleted before them.

It rolls with ``maxSurge: 1, maxUnavailable: 0`` (as dra-example-driver can): the new pod
starts beside the old one with its own sockets (named by its pod UID), kubelet registers both,
and the old pod is stopped only once the new one is Ready (registered, slices written), so the
driver never leaves the node and kubelet never wipes its ResourceSlices. Device-plugin mode
cannot do this (one socket per resource), hence its ``maxUnavailable: 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components.dra_objects import (
    ALL_SOCS_CLASS,
    CLUSTER_ROLE_NAME,
    DRA_APP_NAME,
    SLICE_POLICY_NAME,
    cluster_role_rules,
    device_classes,
    slice_binding_spec,
    slice_policy_spec,
)
from infra.components.dra_pod import dra_pod_spec
from infra.components.one_card import OneCardRule, OneCardRuleArgs
from infra.components.plugin_pod import daemonset_spec, stack_annotations
from infra.settings import StackSettings

TYPE_TOKEN = "qaic-k8s:index:DraDriver"
#: The new pod first, the old one stopped once the new one is Ready.
SURGE_UPDATE: k8s.apps.v1.DaemonSetUpdateStrategyArgsDict = {
    "type": "RollingUpdate", "rolling_update": {"max_surge": 1, "max_unavailable": 0},
}


def dra_labels(component: str = "dra-driver") -> dict[str, str]:
    return {
        "app.kubernetes.io/name": DRA_APP_NAME,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "qaic-k8s",
        "app.kubernetes.io/managed-by": "pulumi",
    }


@dataclass(frozen=True)
class DraDriverArgs:
    settings: StackSettings
    image_ref: pulumi.Input[str]
    namespace: pulumi.Input[str]
    #: The ServiceAccount's name, known up front: the admission policy's CEL names it.
    service_account: str
    depends_on: tuple[pulumi.Resource, ...] = ()


class DraDriver(pulumi.ComponentResource):
    """The qaic.qualcomm.com DRA driver and the cluster objects it needs."""

    device_class_names: list[str]
    daemonset_name: pulumi.Output[str]

    def __init__(
        self, name: str, args: DraDriverArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)

        self.device_classes: list[k8s.resource.v1.DeviceClass] = []
        classes = device_classes(sku_mode=s.sku_based_resources)
        for class_name, spec in classes:
            suffix = "all" if class_name == ALL_SOCS_CLASS else class_name.split(".", 1)[0]
            self.device_classes.append(k8s.resource.v1.DeviceClass(
                f"{name}-class-{suffix}",
                metadata={"name": class_name, "labels": dra_labels("device-class")},
                spec=spec,
                opts=child,
            ))
        self.device_class_names = [n for n, _ in classes]
        # Pods written for device-plugin mode keep qaic-ultra requests on one card.
        self.one_card: OneCardRule | None = None
        if s.one_card_rule:
            self.one_card = OneCardRule(f"{name}-one-card", OneCardRuleArgs(
                namespaces=s.one_card_namespaces, labels=dra_labels("admission")),
                opts=pulumi.ResourceOptions(parent=self, depends_on=self.device_classes))

        self.cluster_role = k8s.rbac.v1.ClusterRole(
            f"{name}-role",
            metadata={"name": CLUSTER_ROLE_NAME, "labels": dra_labels("rbac")},
            rules=cluster_role_rules(),
            opts=child,
        )
        self.role_binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-role-binding",
            metadata={"name": CLUSTER_ROLE_NAME, "labels": dra_labels("rbac")},
            role_ref={
                "api_group": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": self.cluster_role.metadata.name,
            },
            subjects=[{
                "kind": "ServiceAccount",
                "name": args.service_account,
                "namespace": args.namespace,
            }],
            opts=child,
        )
        self.slice_policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
            f"{name}-slice-policy",
            metadata={"name": SLICE_POLICY_NAME, "labels": dra_labels("admission")},
            spec=slice_policy_spec(s.namespace, args.service_account),
            opts=child,
        )
        self.slice_binding = k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
            f"{name}-slice-binding",
            metadata={"name": SLICE_POLICY_NAME, "labels": dra_labels("admission")},
            spec=slice_binding_spec(),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.slice_policy]),
        )

        ds_spec = daemonset_spec(DRA_APP_NAME, dra_labels(),
                                 dra_pod_spec(s, args.image_ref, args.service_account))
        ds_spec["update_strategy"] = SURGE_UPDATE
        self.daemonset = k8s.apps.v1.DaemonSet(
            f"{name}-daemonset",
            metadata={"name": DRA_APP_NAME, "namespace": args.namespace, "labels": dra_labels(),
                      "annotations": stack_annotations()},
            spec=ds_spec,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[
                *args.depends_on, self.role_binding, self.slice_binding,
            ]),
        )
        self.daemonset_name = self.daemonset.metadata.name
        self.register_outputs({
            "deviceClasses": self.device_class_names,
            "daemonSetName": self.daemonset_name,
        })
