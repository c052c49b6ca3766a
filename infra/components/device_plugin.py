"""DevicePlugin: Namespace (unless kube-system), ServiceAccount, optional pull Secret, and
the hardened DaemonSet that runs exactly the built (or pinned) image reference:

- ``allocationApi: devicePlugin``: the device-plugin DaemonSet ``qaic-device-plugin`` and, in
  SKU mode, the admission policy that keeps one qaic resource per container;
- ``allocationApi: dra``: a :class:`~infra.components.dra_driver.DraDriver` child (DaemonSet
  ``qaic-dra-driver``, DeviceClasses, RBAC, the ResourceSlice admission policy). The
  one-resource policy is not created: a claim may hold SoCs of two SKUs, and the DRA driver
  makes all of them visible (docs/dra.md).

The two DaemonSets are different objects on purpose. A switch of mode in one ``pulumi up``
then creates the new one (and awaits it) before the samples are replaced, and deletes the old
one only at the end of the update: a sample pod of the old mode is deleted while its driver
still runs, so kubelet can unprepare its claim (DRA) and nothing waits on a driver that is gone.

The pod itself (environment, host mounts, probes) and every privilege it keeps, with why,
are in :mod:`infra.components.plugin_pod`; the admission rule in
:mod:`infra.components.admission`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.components.admission import binding_spec, policy_name, policy_spec
from infra.components.dra_driver import DraDriver, DraDriverArgs
from infra.components.plugin_pod import (
    APP_NAME,
    PULL_SECRET_NAME,
    daemonset_spec,
    labels,
    pod_spec,
    stack_annotations,
)
from infra.settings import StackSettings

TYPE_TOKEN = "qaic-k8s:index:DevicePlugin"


def docker_config_json(
    registry: str, username: str, password: pulumi.Input[str]
) -> pulumi.Output[str]:
    def encode(pw: str) -> str:
        auth = base64.b64encode(f"{username}:{pw}".encode()).decode()
        config = {"auths": {registry.split("/", 1)[0]: {"username": username, "auth": auth}}}
        return json.dumps(config, sort_keys=True)

    return pulumi.Output.secret(pulumi.Output.from_input(password).apply(encode))


@dataclass(frozen=True)
class DevicePluginArgs:
    settings: StackSettings
    image_ref: pulumi.Input[str]
    registry_password: pulumi.Input[str] | None = None


class DevicePlugin(pulumi.ComponentResource):
    """The kubelet device plugin DaemonSet and what it needs in its namespace."""

    namespace: pulumi.Output[str]
    daemonset_name: pulumi.Output[str]
    resource_names: list[str]
    device_class_names: list[str]

    def __init__(
        self, name: str, args: DevicePluginArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__(TYPE_TOKEN, name, None, opts)
        s = args.settings
        child = pulumi.ResourceOptions(parent=self)
        self.resource_names = s.resource_names

        depends: list[pulumi.Resource] = []
        self.ns: k8s.core.v1.Namespace | None = None
        if s.create_namespace:
            self.ns = k8s.core.v1.Namespace(
                f"{name}-namespace",
                metadata={
                    "name": s.namespace,
                    "labels": {
                        **labels("namespace"),
                        # hostPath volumes and hostNetwork are outside the baseline level;
                        # the container itself is not privileged.
                        "pod-security.kubernetes.io/enforce": "privileged",
                        "pod-security.kubernetes.io/warn": "baseline",
                    },
                },
                opts=child,
            )
            depends.append(self.ns)
            namespace: pulumi.Input[str] = self.ns.metadata.name
        else:
            namespace = s.namespace
        with_ns = pulumi.ResourceOptions(parent=self, depends_on=depends)

        self.service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata={"name": APP_NAME, "namespace": namespace, "labels": labels()},
            automount_service_account_token=False,
            opts=with_ns,
        )

        self.pull_secret: k8s.core.v1.Secret | None = None
        if s.create_pull_secret and args.registry_password is not None:
            self.pull_secret = k8s.core.v1.Secret(
                f"{name}-pull-secret",
                metadata={"name": PULL_SECRET_NAME, "namespace": namespace, "labels": labels()},
                type="kubernetes.io/dockerconfigjson",
                string_data={".dockerconfigjson": docker_config_json(
                    s.registry, s.registry_username, args.registry_password
                )},
                opts=with_ns,
            )

        self.admission: list[pulumi.CustomResource] = []
        self.dra: DraDriver | None = None
        self.device_class_names = []
        if s.dra:
            sa_deps = [*depends, self.service_account]
            if self.pull_secret is not None:
                sa_deps.append(self.pull_secret)
            self.dra = DraDriver(f"{name}-dra", DraDriverArgs(
                settings=s, image_ref=args.image_ref, namespace=namespace,
                service_account=APP_NAME, depends_on=tuple(sa_deps),
            ), opts=child)
            self.daemonset = self.dra.daemonset
            self.device_class_names = self.dra.device_class_names
        else:
            self._device_plugin_daemonset(name, s, args, namespace, with_ns)
        self.namespace = pulumi.Output.from_input(namespace)
        self.daemonset_name = self.daemonset.metadata.name
        self.register_outputs({
            "namespace": self.namespace,
            "daemonSetName": self.daemonset_name,
            "resourceNames": self.resource_names,
            "deviceClasses": self.device_class_names,
        })

    def _device_plugin_daemonset(
        self, name: str, s: StackSettings, args: DevicePluginArgs,
        namespace: pulumi.Input[str], with_ns: pulumi.ResourceOptions,
    ) -> None:
        self.daemonset = k8s.apps.v1.DaemonSet(
            f"{name}-daemonset",
            metadata={"name": APP_NAME, "namespace": namespace, "labels": labels(),
                      "annotations": stack_annotations()},
            spec=daemonset_spec(
                APP_NAME, labels(),
                pod_spec(s, args.image_ref, self.service_account.metadata.name),
                annotations={"qualcomm.com/resource-names": ",".join(s.resource_names)},
            ),
            opts=with_ns,
        )
        if s.sku_based_resources:
            rule = policy_name(s.namespace)
            policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
                f"{name}-one-resource-policy",
                metadata={"name": rule, "labels": labels("admission")},
                spec=policy_spec(),
                opts=pulumi.ResourceOptions(parent=self),
            )
            binding = k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
                f"{name}-one-resource-binding",
                metadata={"name": rule, "labels": labels("admission")},
                spec=binding_spec(rule),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[policy]),
            )
            self.admission = [policy, binding]
