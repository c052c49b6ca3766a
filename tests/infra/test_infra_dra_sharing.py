"""DRA mode's stack options of issue 20 under Pulumi mocks: `allowedDeviceShares` reaches the
driver (consumable capacity instead of a refusal), the 4-SoC job's prioritized list keeps
four different SoCs when they are shared, and the monitoring sample (`workloadMonitor`): an
admin-access namespace, the monitoring class and the driver's setting that publishes its
device, an All + adminAccess claim of it, a DaemonSet using it; every object strictly valid
for Kubernetes 1.34 and later."""

from __future__ import annotations

from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
from infra_harness import kubernetes_objects
from test_infra_dra import objects, pod_of, run_dra

from workloads.samples import unversioned

MONITOR_NS = "qaic-monitoring"


def env_of(run: Any) -> dict[str, str]:
    ds = next(d for d in objects(run, "DaemonSet").values()
              if d["metadata"]["name"] == "qaic-dra-driver")
    return {e["name"]: e.get("value", "") for e in pod_of(ds)["containers"][0]["env"]}


def test_shares_reach_the_dra_driver_and_the_job_asks_for_different_socs() -> None:
    """Before: `allowedDeviceShares` > 1 with `allocationApi: dra` was refused, and the DRA
    driver never saw the setting."""
    assert env_of(run_dra())["ALLOWED_QAIC_DEVICE_SHARES"] == "1"
    run = run_dra(allowedDeviceShares="4")
    assert env_of(run)["ALLOWED_QAIC_DEVICE_SHARES"] == "4"
    [job] = [t for n, t in objects(run, "ResourceClaimTemplate").items()
             if unversioned(n) == "qaic-ultra-4soc"]
    assert job["spec"]["spec"]["devices"]["constraints"] == [
        {"requests": ["socs/one-card"], "matchAttribute": "qaic.qualcomm.com/cardID"},
        {"requests": ["socs/one-card", "socs/std"],
         "distinctAttribute": "resource.kubernetes.io/pciBusID"}]


def test_the_monitor_sees_every_soc_with_admin_access_in_its_own_namespace() -> None:
    run = run_dra(workloadMonitor="true")
    namespaces = objects(run, "Namespace")
    assert namespaces[MONITOR_NS]["metadata"]["labels"][
        "resource.kubernetes.io/admin-access"] == "true"
    # The samples' namespace does not get the label: it would open every SoC to them.
    assert "resource.kubernetes.io/admin-access" not in namespaces["qaic-workloads"][
        "metadata"]["labels"]
    [(name, template)] = [(n, t) for n, t in objects(run, "ResourceClaimTemplate").items()
                          if unversioned(n) == "qaic-monitor"]
    assert template["metadata"]["namespace"] == MONITOR_NS
    assert template["spec"]["spec"]["devices"] == {"requests": [{"name": "socs", "exactly": {
        "deviceClassName": "monitor.qaic.qualcomm.com", "allocationMode": "All",
        "adminAccess": True}}]}
    # The class selects the driver's monitoring view, which the driver then publishes.
    selectors = objects(run, "DeviceClass")["monitor.qaic.qualcomm.com"]["spec"]["selectors"]
    assert selectors[1] == {"cel": {"expression": (
        'has(device.attributes["qaic.qualcomm.com"].type) && '
        'device.attributes["qaic.qualcomm.com"].type == "all"')}}
    assert env_of(run)["QAIC_DRA_MONITOR_DEVICE"] == "true"
    assert "QAIC_DRA_MONITOR_DEVICE" not in env_of(run_dra())
    ds = objects(run, "DaemonSet")["qaic-monitor"]
    assert ds["metadata"]["namespace"] == MONITOR_NS
    pod = pod_of(ds)
    assert pod["resourceClaims"] == [{"name": "socs", "resourceClaimTemplateName": name}]
    assert pod["containers"][0]["resources"]["claims"] == [{"name": "socs"}]
    assert f"DaemonSet/{MONITOR_NS}/qaic-monitor" in run.outputs["workloads"]
    for version in ("1.34", kubernetes_validate.utils.latest_version()):
        for obj in kubernetes_objects(run.mocks):
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_monitor_alone_creates_no_samples_namespace() -> None:
    run = run_dra(workloadMonitor="true", workloadPodExample="false",
                  workloadDeployment="false", workloadUltraJob="false")
    assert set(objects(run, "Namespace")) >= {MONITOR_NS}
    assert "qaic-workloads" not in objects(run, "Namespace")
    assert [unversioned(n) for n in objects(run, "ResourceClaimTemplate")] == ["qaic-monitor"]
