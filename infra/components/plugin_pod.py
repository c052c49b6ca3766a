"""The device-plugin pod: its environment, host mounts, probes and hardened container.

Privileges it keeps, and why (docs/provisioning.md repeats this for operators):
- runs as UID 0: the kubelet's device-plugin directory is root-owned (0755); the process
  needs no capability for it (it owns the directory as root), so ALL capabilities are dropped.
- hostPath /var/lib/kubelet/device-plugins read-write: the plugin serves its gRPC sockets
  there and watches kubelet.sock to re-register after kubelet restarts.
- hostPath /var/lib/kubelet/pod-resources read-only: kubelet's PodResources socket, to learn
  at start which SoCs running pods already hold (a socket can be connected to on a read-only
  mount).
- hostPaths of sysfs and /dev (stack keys hostSysfsPath, hostDevPath) read-only: discovery
  (PCI functions, accel nodes). /dev goes to /host/dev, never over the container's own /dev.
- hostPath of the Platform SDK (hostSdkPath, default /opt/qti-aic) read-only at /opt/qti-aic:
  the plugin runs the host's tools/qaic-util for SKU and firmware Status.
- hostPath /run/udev read-only, only with udev on and udevSource udev: the udev database.
- hostNetwork (stack option, default on): kernel uevents are broadcast on netlink only in
  the host network namespace; with it the plugin sees resets in well under a second. Without
  it the 5 s rescan (QAIC_RESYNC_SECONDS) and inotify on /dev remain. With hostNetwork the
  metrics endpoint binds the node's own IP (downward API status.hostIP), not every address.
- optional read-write hostPaths for NFD feature files and CDI specs, only when enabled.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.settings import StackSettings

APP_NAME = "qaic-device-plugin"
PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
POD_RESOURCES_DIR = "/var/lib/kubelet/pod-resources"
SDK_DIR = "/opt/qti-aic"  # where the plugin looks for tools/qaic-util
NFD_MOUNT = "/etc/kubernetes/node-feature-discovery/features.d"
PULL_SECRET_NAME = "qaic-registry"
#: On each DaemonSet: the Pulumi stack that deploys it, so a stack's preview tells its own
#: DaemonSets from another stack's on the same cluster (infra/cluster_pools.py).
STACK_ANNOTATION = "qualcomm.com/qaic-k8s-stack"


def labels(component: str = "device-plugin") -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "qaic-k8s",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def stack_annotations() -> dict[str, str]:
    return {STACK_ANNOTATION: pulumi.get_stack()}


def _bool(value: bool) -> str:
    return "true" if value else "false"


def udev_on(s: StackSettings) -> bool:
    """udevd's netlink events reach only the host network namespace: without hostNetwork a
    monitor would open and silently hear nothing, so say plainly that there is none."""
    return s.udev_enabled and s.host_network


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
        "QAIC_UDEV_ENABLED": _bool(udev_on(s)),
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
    out: list[k8s.core.v1.EnvVarArgsDict] = [{"name": k, "value": v} for k, v in env.items()]
    if s.host_network and s.metrics_port:
        # The host's own address, not 0.0.0.0: /metrics is not offered on every node address
        # (the pod IP equals the host IP under hostNetwork, so the probes reach it).
        out.append({
            "name": "QAIC_METRICS_ADDRESS",
            "value_from": {"field_ref": {"field_path": "status.hostIP"}},
        })
    return out


def host_path(
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
        # DirectoryOrCreate: the plugin may start before kubelet has made its directories.
        host_path(
            "device-plugins", PLUGIN_DIR, PLUGIN_DIR, read_only=False, kind="DirectoryOrCreate"
        ),
        host_path("pod-resources", POD_RESOURCES_DIR, POD_RESOURCES_DIR, read_only=True,
                  kind="DirectoryOrCreate"),
        *node_paths(s),
    ]
    if udev_on(s) and s.udev_source == "udev":
        # DirectoryOrCreate: a node without udevd still runs the plugin (inotify + rescans).
        pairs.append(host_path("udev", "/run/udev", "/run/udev", read_only=True,
                               kind="DirectoryOrCreate"))
    if s.nfd_features_dir:
        pairs.append(host_path(
            "nfd-features", s.nfd_features_dir, NFD_MOUNT, False, "DirectoryOrCreate"
        ))
    if s.cdi_enabled:
        pairs.append(host_path("cdi", s.cdi_dir, s.cdi_dir, False, "DirectoryOrCreate"))
    return with_tmp(pairs)


def node_paths(s: StackSettings) -> list[
    tuple[k8s.core.v1.VolumeArgsDict, k8s.core.v1.VolumeMountArgsDict]
]:
    """The node's sysfs, /dev and Platform SDK, read-only: discovery and health (both modes)."""
    return [
        host_path("sys", s.host_sysfs_path, "/host/sys", read_only=True),
        host_path("dev", s.host_dev_path, "/host/dev", read_only=True),
        # DirectoryOrCreate, not Directory: a node without the SDK must still run the plugin
        # (it warns that SKUs are guesses and Status health is off); the empty directory the
        # kubelet leaves there is harmless to a later SDK install.
        host_path("qaic-sdk", s.host_sdk_path, SDK_DIR, read_only=True,
                  kind="DirectoryOrCreate"),
    ]


def with_tmp(
    pairs: list[tuple[k8s.core.v1.VolumeArgsDict, k8s.core.v1.VolumeMountArgsDict]],
) -> tuple[list[k8s.core.v1.VolumeArgsDict], list[k8s.core.v1.VolumeMountArgsDict]]:
    volumes = [v for v, _ in pairs]
    mounts = [m for _, m in pairs]
    # readOnlyRootFilesystem: Python still wants a writable scratch dir.
    volumes.append({"name": "tmp", "empty_dir": {"medium": "Memory", "size_limit": "16Mi"}})
    mounts.append({"name": "tmp", "mount_path": "/tmp"})
    return volumes, mounts


def hardened_container(
    s: StackSettings, image: pulumi.Input[str], env: list[k8s.core.v1.EnvVarArgsDict],
    mounts: list[k8s.core.v1.VolumeMountArgsDict],
) -> k8s.core.v1.ContainerArgsDict:
    """The container both modes run: not privileged, no capabilities, read-only root,
    RuntimeDefault seccomp; UID 0 only to own sockets in kubelet's root-owned directories."""
    requests = {"cpu": s.cpu_request, "memory": s.memory_request}
    limits = {"memory": s.memory_limit}
    if s.cpu_limit:
        limits["cpu"] = s.cpu_limit
    return {
        "name": "plugin",
        "image": image,
        "image_pull_policy": s.image_pull_policy,
        "env": env,
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


def container(s: StackSettings, image: pulumi.Input[str]) -> k8s.core.v1.ContainerArgsDict:
    _, mounts = volumes_and_mounts(s)
    return with_probes(s, hardened_container(s, image, plugin_env(s), mounts))


def with_probes(
    s: StackSettings, spec: k8s.core.v1.ContainerArgsDict
) -> k8s.core.v1.ContainerArgsDict:
    """With `metricsPort` (both modes): the port, a liveness probe on /healthz (every loop
    runs) and a readiness probe on /readyz (registered with kubelet; in DRA mode also the
    node's ResourceSlices written)."""
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
        # Ready = registered with kubelet (the plugin's /readyz), so rollouts and `pulumi up`
        # wait for the devices, not just for the process.
        spec["readiness_probe"] = {
            "http_get": {"path": "/readyz", "port": "metrics"},
            "period_seconds": 2,
            "timeout_seconds": 2,
            "failure_threshold": 1,
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


def daemonset_spec(
    app: str, pod_labels: dict[str, str], pod: k8s.core.v1.PodSpecArgsDict,
    annotations: dict[str, str] | None = None,
) -> k8s.apps.v1.DaemonSetSpecArgsDict:
    """One pod per node, replaced one node at a time (a node's SoCs are never served twice)."""
    metadata: k8s.meta.v1.ObjectMetaArgsDict = {"labels": pod_labels}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "selector": {"match_labels": {"app.kubernetes.io/name": app}},
        "update_strategy": {"type": "RollingUpdate", "rolling_update": {"max_unavailable": 1}},
        "template": {"metadata": metadata, "spec": pod},
    }
