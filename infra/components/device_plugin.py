"""DevicePlugin: Namespace (unless kube-system), ServiceAccount, optional pull Secret and
the hardened DaemonSet that runs exactly the built (or pinned) image reference.

Privileges it keeps, and why (docs/provisioning.md repeats this for operators):
- runs as UID 0: the kubelet's device-plugin directory is root-owned (0755); the process
  needs no capability for it (it owns the directory as root), so ALL capabilities are dropped.
- hostPath /var/lib/kubelet/device-plugins read-write: the plugin serves its gRPC sockets
  there and watches kubelet.sock to re-register after kubelet restarts.
- hostPath /sys, /dev, /run/udev read-only: discovery (PCI functions, accel nodes) and the
  udev database. /dev goes to /host/dev, never over the container's own /dev.
- hostNetwork (stack option, default on): kernel uevents are broadcast on netlink only in
  the host network namespace; with it the plugin sees resets in well under a second,
  without it health falls back to inotify plus polling (QAIC_HEALTH_POLL_SECONDS).
- optional read-write hostPaths for NFD feature files and CDI specs, only when enabled.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.settings import StackSettings

TYPE_TOKEN = "qaic-k8s:index:DevicePlugin"
APP_NAME = "qaic-device-plugin"
PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
NFD_MOUNT = "/etc/kubernetes/node-feature-discovery/features.d"
PULL_SECRET_NAME = "qaic-registry"


def labels(component: str = "device-plugin") -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "qaic-k8s",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def _bool(value: bool) -> str:
    return "true" if value else "false"


def plugin_env(s: StackSettings) -> list[k8s.core.v1.EnvVarArgsDict]:
    """The plugin's settings, as the environment variables it reads (names are fixed)."""
    env: dict[str, str] = {
        "QAIC_SKU_BASED_RESOURCE_ENABLED": _bool(s.sku_based_resources),
        "ALLOWED_QAIC_DEVICE_SHARES": str(s.allowed_device_shares),
        "QAIC_LOG_LEVEL": s.log_level,
        "QAIC_LOG_FORMAT": s.log_format,
        "QAIC_METRICS_PORT": str(s.metrics_port),
        "QAIC_MULTI_SOC_POLICY": s.multi_soc_policy,
        "QAIC_HEALTH_POLL_SECONDS": str(s.health_poll_seconds),
        "QAIC_PRESTART_CHECK": _bool(s.prestart_check),
        "QAIC_CDI_ENABLED": _bool(s.cdi_enabled),
        # udevd's netlink events reach only the host network namespace: without hostNetwork a
        # monitor would open and silently hear nothing, so say plainly that there is none.
        "QAIC_UDEV_ENABLED": _bool(s.host_network),
        "QAIC_UDEV_SOURCE": s.udev_source,
        "QAIC_UE_COOLDOWN_SECONDS": str(s.ue_cooldown_seconds),
        "QAIC_SYSFS_ROOT": "/host/sys",
        "QAIC_DEV_ROOT": "/host/dev",
        "QAIC_DEVICE_PLUGIN_DIR": PLUGIN_DIR,
    }
    if s.cdi_enabled:
        env["QAIC_CDI_DIR"] = s.cdi_dir
    if s.nfd_features_dir:
        env["QAIC_NFD_FEATURES_DIR"] = NFD_MOUNT
    if s.sku_overrides:
        env["QAIC_SKU_OVERRIDES"] = s.sku_overrides_json
    return [{"name": k, "value": v} for k, v in env.items()]


def _host_path(
    name: str, path: str, mount: str, read_only: bool, kind: str = "Directory"
) -> tuple[k8s.core.v1.VolumeArgsDict, k8s.core.v1.VolumeMountArgsDict]:
    volume: k8s.core.v1.VolumeArgsDict = {"name": name, "host_path": {"path": path, "type": kind}}
    mount_: k8s.core.v1.VolumeMountArgsDict = {
        "name": name, "mount_path": mount, "read_only": read_only,
    }
    return volume, mount_


def volumes_and_mounts(
    s: StackSettings,
) -> tuple[list[k8s.core.v1.VolumeArgsDict], list[k8s.core.v1.VolumeMountArgsDict]]:
    pairs = [
        # DirectoryOrCreate: the plugin may start before kubelet has made its directory.
        _host_path(
            "device-plugins", PLUGIN_DIR, PLUGIN_DIR, read_only=False, kind="DirectoryOrCreate"
        ),
        _host_path("sys", "/sys", "/host/sys", read_only=True),
        _host_path("dev", "/dev", "/host/dev", read_only=True),
        # DirectoryOrCreate: a node without udev must still run the plugin (inotify + polling).
        _host_path("udev", "/run/udev", "/run/udev", read_only=True, kind="DirectoryOrCreate"),
    ]
    if s.nfd_features_dir:
        pairs.append(_host_path(
            "nfd-features", s.nfd_features_dir, NFD_MOUNT, False, "DirectoryOrCreate"
        ))
    if s.cdi_enabled:
        pairs.append(_host_path("cdi", s.cdi_dir, s.cdi_dir, False, "DirectoryOrCreate"))
    volumes = [v for v, _ in pairs]
    mounts = [m for _, m in pairs]
    # readOnlyRootFilesystem: Python still wants a writable scratch dir.
    volumes.append({"name": "tmp", "empty_dir": {"medium": "Memory", "size_limit": "16Mi"}})
    mounts.append({"name": "tmp", "mount_path": "/tmp"})
    return volumes, mounts


def container(s: StackSettings, image: pulumi.Input[str]) -> k8s.core.v1.ContainerArgsDict:
    _, mounts = volumes_and_mounts(s)
    requests = {"cpu": s.cpu_request, "memory": s.memory_request}
    limits = {"memory": s.memory_limit}
    if s.cpu_limit:
        limits["cpu"] = s.cpu_limit
    spec: k8s.core.v1.ContainerArgsDict = {
        "name": "plugin",
        "image": image,
        "image_pull_policy": "IfNotPresent",
        "env": plugin_env(s),
        "resources": {"requests": requests, "limits": limits},
        "volume_mounts": mounts,
        "security_context": {
            "privileged": False,
            "allow_privilege_escalation": False,
            "read_only_root_filesystem": True,
            "run_as_user": 0,
            "run_as_group": 0,
            "run_as_non_root": False,
            "capabilities": {"drop": ["ALL"]},
            "seccomp_profile": {"type": "RuntimeDefault"},
        },
        "termination_message_policy": "FallbackToLogsOnError",
    }
    if s.metrics_port:
        spec["ports"] = [{
            "name": "metrics", "container_port": s.metrics_port, "protocol": "TCP",
        }]
        spec["liveness_probe"] = {
            "http_get": {"path": "/healthz", "port": "metrics"},
            "initial_delay_seconds": 10,
            "period_seconds": 15,
            "timeout_seconds": 3,
            "failure_threshold": 3,
        }
    return spec


def pod_spec(
    s: StackSettings, image: pulumi.Input[str], service_account: pulumi.Input[str]
) -> k8s.core.v1.PodSpecArgsDict:
    volumes, _ = volumes_and_mounts(s)
    spec: k8s.core.v1.PodSpecArgsDict = {
        "service_account_name": service_account,
        "automount_service_account_token": False,
        "priority_class_name": s.priority_class_name,
        "node_selector": s.node_selector_map,
        "tolerations": s.toleration_list,  # type: ignore[typeddict-item]
        "host_network": s.host_network,
        "dns_policy": "ClusterFirstWithHostNet" if s.host_network else "ClusterFirst",
        "containers": [container(s, image)],
        "volumes": volumes,
        "termination_grace_period_seconds": 30,
    }
    if s.create_pull_secret:
        spec["image_pull_secrets"] = [{"name": PULL_SECRET_NAME}]
    return spec


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

        selector = {"app.kubernetes.io/name": APP_NAME}
        self.daemonset = k8s.apps.v1.DaemonSet(
            f"{name}-daemonset",
            metadata={"name": APP_NAME, "namespace": namespace, "labels": labels()},
            spec={
                "selector": {"match_labels": selector},
                "update_strategy": {
                    "type": "RollingUpdate",
                    "rolling_update": {"max_unavailable": 1},
                },
                "template": {
                    "metadata": {
                        "labels": labels(),
                        "annotations": {
                            "qualcomm.com/resource-names": ",".join(s.resource_names),
                        },
                    },
                    "spec": pod_spec(s, args.image_ref, self.service_account.metadata.name),
                },
            },
            opts=with_ns,
        )
        self.namespace = pulumi.Output.from_input(namespace)
        self.daemonset_name = self.daemonset.metadata.name
        self.register_outputs({
            "namespace": self.namespace,
            "daemonSetName": self.daemonset_name,
            "resourceNames": self.resource_names,
        })
