"""The DRA driver pod (``allocationApi: dra``): the same image and hardened container as the
device plugin, started with ``QAIC_ALLOCATION_API=dra``.

Privileges it keeps, and why (docs/provisioning.md and docs/dra.md repeat this):
- runs as UID 0, not privileged, ALL capabilities dropped: kubelet's plugin directories are
  root-owned (0750/0755); as their owner root creates sockets there without a capability.
- hostPath /var/lib/kubelet/plugins_registry read-write: the registration socket
  ``qaic.qualcomm.com-<pod UID>-reg.sock`` kubelet's plugin watcher finds.
- hostPath /var/lib/kubelet/plugins/qaic.qualcomm.com read-write (only the driver's own
  directory, not all of kubelet's plugins): ``dra-<pod UID>.sock`` kubelet calls
  NodePrepareResources on, ``checkpoint.json`` of prepared claims and the lock the pods of a
  rolling update take turns with. Same path inside and out: the socket's absolute path is
  what registration tells kubelet.
- the pod's UID (downward API): per-pod socket names, so the DaemonSet rolls with
  ``maxSurge: 1, maxUnavailable: 0``: the new pod registers beside the old one (kubelet 1.33+
  keeps both and calls the newest) and the driver is never unregistered on the node.
- hostPath of ``cdiDir`` (default /var/run/cdi) read-write: one CDI spec per prepared claim,
  which the container runtime reads to inject the claim's /dev/accel nodes and
  QAIC_VISIBLE_DEVICES.
- hostPaths of sysfs, /dev and the Platform SDK read-only: discovery and health, as in
  device-plugin mode.
- hostPath /var/lib/kubelet/pod-resources read-only: kubelet's PodResources socket. After a
  move from device-plugin mode, the driver asks it which SoCs running pods still hold under
  ``qualcomm.com/qaic*`` (and whether the old device plugin still serves) and publishes those
  SoCs only once released (dra/device_plugin_socs.py); without it a SoC such a pod holds
  could be allocated to a claim too. A socket can be connected to on a read-only mount.
- a service-account token (automounted, bound to the pod): the driver writes its node's
  ResourceSlices, reads the claims it prepares and writes its entries in their status.
  Bound to the pod, the token names the node, which the ResourceSlice admission policy and
  the API server's check of claim status writes (`associated-node`) rely on.
- the metrics port (`metricsPort`, in the pod's own network namespace): /metrics, and the
  liveness (/healthz) and readiness (/readyz: registered with kubelet, slices written) probes.
Not kept, unlike device-plugin mode: hostNetwork (the DRA mode listens to no uevents; inotify
on /dev/accel and the rescan find changes), /run/udev, the device-plugins directory, NFD
feature files.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.components.plugin_pod import (
    POD_RESOURCES_DIR,
    PULL_SECRET_NAME,
    hardened_container,
    host_path,
    node_paths,
    with_probes,
    with_tmp,
)
from infra.settings import StackSettings
from qaic_device_plugin.dra.backend import DRIVER_NAME

REGISTRY_DIR = "/var/lib/kubelet/plugins_registry"
PLUGINS_DIR = "/var/lib/kubelet/plugins"
DRIVER_DIR = f"{PLUGINS_DIR}/{DRIVER_NAME}"


def dra_env(s: StackSettings) -> list[k8s.core.v1.EnvVarArgsDict]:
    """The DRA mode's environment (dra_settings.py, and the common discovery settings)."""
    env: dict[str, str] = {
        "QAIC_ALLOCATION_API": "dra",
        "QAIC_DRA_PLUGINS_DIR": PLUGINS_DIR,
        "QAIC_DRA_REGISTRY_DIR": REGISTRY_DIR,
        "QAIC_CDI_DIR": s.cdi_dir,
        "QAIC_LOG_LEVEL": s.log_level,
        "QAIC_LOG_FORMAT": s.log_format,
        "QAIC_HEALTH_POLL_SECONDS": str(s.health_poll_seconds),
        "QAIC_UE_COOLDOWN_SECONDS": str(s.ue_cooldown_seconds),
        "QAIC_UDEV_ENABLED": "false",  # no host network namespace, so no uevents
        "QAIC_METRICS_PORT": str(s.metrics_port),
        # > 1: SoCs are published with consumable capacity (claims share them), no cards.
        "ALLOWED_QAIC_DEVICE_SHARES": str(s.allowed_device_shares),
        "QAIC_SYSFS_ROOT": "/host/sys",
        "QAIC_DEV_ROOT": "/host/dev",
    }
    if s.sku_overrides:
        env["QAIC_SKU_OVERRIDES"] = s.sku_overrides_json
    if s.workload_monitor:  # the monitoring view the monitor's claim asks for (monitor.py)
        env["QAIC_DRA_MONITOR_DEVICE"] = "true"
    out: list[k8s.core.v1.EnvVarArgsDict] = [{"name": k, "value": v} for k, v in env.items()]
    # The node: the pool name and the spec.nodeName of every ResourceSlice it writes.
    out.append({"name": "NODE_NAME", "value_from": {"field_ref": {"field_path": "spec.nodeName"}}})
    # Per-pod socket names: two pods of a rolling update serve side by side (dra_driver.py).
    out.append({"name": "QAIC_DRA_POD_UID",
                "value_from": {"field_ref": {"field_path": "metadata.uid"}}})
    return out


def dra_volumes_and_mounts(
    s: StackSettings,
) -> tuple[list[k8s.core.v1.VolumeArgsDict], list[k8s.core.v1.VolumeMountArgsDict]]:
    # DirectoryOrCreate: the driver may start before kubelet has made its directories.
    return with_tmp([
        host_path("plugins-registry", REGISTRY_DIR, REGISTRY_DIR, read_only=False,
                  kind="DirectoryOrCreate"),
        host_path("driver-dir", DRIVER_DIR, DRIVER_DIR, read_only=False,
                  kind="DirectoryOrCreate"),
        host_path("cdi", s.cdi_dir, s.cdi_dir, read_only=False, kind="DirectoryOrCreate"),
        # Which SoCs pods of the device-plugin mode still hold (moving between modes).
        host_path("pod-resources", POD_RESOURCES_DIR, POD_RESOURCES_DIR, read_only=True,
                  kind="DirectoryOrCreate"),
        *node_paths(s),
    ])


def dra_pod_spec(
    s: StackSettings, image: pulumi.Input[str], service_account: pulumi.Input[str]
) -> k8s.core.v1.PodSpecArgsDict:
    volumes, mounts = dra_volumes_and_mounts(s)
    spec: k8s.core.v1.PodSpecArgsDict = {
        "service_account_name": service_account,
        # The driver talks to the API server: a token bound to this pod (and its node).
        "automount_service_account_token": True,
        "priority_class_name": s.priority_class_name,
        "node_selector": s.node_selector_map,
        "tolerations": s.toleration_list,  # type: ignore[typeddict-item]
        "host_network": False,
        "dns_policy": "ClusterFirst",
        "containers": [with_probes(s, hardened_container(s, image, dra_env(s), mounts))],
        "volumes": volumes,
        "termination_grace_period_seconds": 30,
    }
    if s.create_pull_secret:
        spec["image_pull_secrets"] = [{"name": PULL_SECRET_NAME}]
    return spec
