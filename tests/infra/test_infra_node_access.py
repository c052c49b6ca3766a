"""What the DaemonSet gives the plugin on the node (issue 13 items 2, 5, 7, 11; issue 10's
host-path keys): SDK, PodResources, metrics address, readiness, host paths, pull policy."""

from __future__ import annotations

from typing import Any

from infra_harness import manifest, run_components

from infra.components.device_plugin import DevicePlugin, DevicePluginArgs
from infra.config import load_settings


def pod(**raw: str) -> dict[str, Any]:
    s = load_settings("unit", raw)
    mocks, _ = run_components(lambda: {"d": DevicePlugin(
        "dp", DevicePluginArgs(settings=s, image_ref="r:1")).daemonset_name})
    spec: dict[str, Any] = manifest(mocks.one("kubernetes:apps/v1:DaemonSet"))["spec"]
    return spec["template"]["spec"]  # type: ignore[no-any-return]


def mounts(p: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    """mount path -> (host path, hostPath type, read-only)."""
    vols = {v["name"]: v["hostPath"] for v in p["volumes"] if "hostPath" in v}
    return {m["mountPath"]: (vols[m["name"]]["path"], vols[m["name"]]["type"], m["readOnly"])
            for m in p["containers"][0]["volumeMounts"] if m["name"] in vols}


def test_sdk_and_pod_resources_are_mounted_read_only_at_their_own_paths() -> None:
    m = mounts(pod())
    assert m["/opt/qti-aic"] == ("/opt/qti-aic", "DirectoryOrCreate", True)
    assert m["/var/lib/kubelet/pod-resources"] == (
        "/var/lib/kubelet/pod-resources", "DirectoryOrCreate", True)


def test_host_paths_are_stack_keys() -> None:
    m = mounts(pod(hostSysfsPath="/run/n/sys", hostDevPath="/run/n/dev",
                   hostSdkPath="/run/n/opt/qti-aic"))
    assert m["/host/sys"] == ("/run/n/sys", "Directory", True)
    assert m["/host/dev"] == ("/run/n/dev", "Directory", True)
    assert m["/opt/qti-aic"] == ("/run/n/opt/qti-aic", "DirectoryOrCreate", True)


def test_readiness_means_registered_and_liveness_stays() -> None:
    c = pod()["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    off = pod(metricsPort="0")["containers"][0]
    assert "readinessProbe" not in off and "livenessProbe" not in off


def test_metrics_bind_the_host_ip_only_under_host_network() -> None:
    env = {e["name"]: e for e in pod()["containers"][0]["env"]}
    assert env["QAIC_METRICS_ADDRESS"] == {
        "name": "QAIC_METRICS_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}
    in_pod_netns = {e["name"] for e in pod(hostNetwork="false")["containers"][0]["env"]}
    assert "QAIC_METRICS_ADDRESS" not in in_pod_netns  # the pod's own IP space: all is fine


def test_udev_off_drops_the_udev_database_mount() -> None:
    p = pod(udevEnabled="false")
    env = {e["name"]: e.get("value") for e in p["containers"][0]["env"]}
    assert env["QAIC_UDEV_ENABLED"] == "false"
    assert "/run/udev" not in mounts(p)
    assert "/run/udev" not in mounts(pod(udevSource="kernel"))  # raw uevents need no udevd
    assert "/run/udev" in mounts(pod())


def test_image_pull_policy_is_a_stack_key() -> None:
    assert pod()["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert pod(imagePullPolicy="Never")["containers"][0]["imagePullPolicy"] == "Never"
