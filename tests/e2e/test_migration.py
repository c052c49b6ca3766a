"""Moving a running cluster between modes (issue 21, mode migration) on the real single-node
cluster (cluster/, containerd 2 for CDI) with the real Pulumi CLI: device-plugin mode with a
pod holding SoCs, `pulumi up` to DRA mode, the pod's SoCs withheld from the driver's
ResourceSlices until it ends (dra/device_plugin_socs.py), pods written for device-plugin
mode (`qualcomm.com/qaic: N`) served through the DeviceClass's extended resource, and back:
refused while a claim of ours is allocated (infra/mode_switch.py), then one `pulumi up`.

One cluster and one stack for the module (no samples: the test's own pods are the
workload); the tests run in file order, each on the state the one before left. The figures
are printed (run with -s) and asserted against generous bounds. On kubelet 1.37.2 a pod
written for device-plugin mode starts through DRA only once kubelet has forgotten the device
plugin (5 minutes after it stopped); the test that waits for that is marked `fleet` (run by
`make e2e-full`), and the rest of the module does not depend on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cluster.cluster import NODE_NAME, Cluster
from cluster.inspect import container_view, held_devices
from cluster.stack import Stack, UpFailed, cluster_for_tests
from cluster.tools import missing_prerequisites
from cluster.watch import Watch
from qaic_device_plugin.dra.backend import device_name
from qaic_device_plugin.dra.cards import card_device_name
from qaic_device_plugin.sim.node import FakeSoc
from workloads.samples import QAIC_GROUP_ID, WORKLOAD_UID, show_command

pytestmark = pytest.mark.e2e

DRIVER = "qaic.qualcomm.com"
NS = "migration"
QAIC = "qualcomm.com/qaic"
DRIVER_SELECTOR = "app.kubernetes.io/name=qaic-dra-driver"
NO_SAMPLES = {"workloadPodExample": "false", "workloadDeployment": "false",
              "workloadUltraJob": "false"}


@dataclass
class Seen:
    """What the tests learn and hand on (the module's tests run in order on one cluster)."""

    dp_socs: list[FakeSoc] = field(default_factory=list)
    dp_container: tuple[str, int] = ("", -1)
    up_returned: float = 0.0  # time.monotonic() when `pulumi up` to DRA mode returned
    figures: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    why = missing_prerequisites(cdi=True)
    if why:
        pytest.skip("; ".join(why))
    with cluster_for_tests(cdi=True) as c:
        yield c


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    s = Stack.create(cluster, tmp_path_factory.mktemp("stack"), allocationApi="devicePlugin",
                     **NO_SAMPLES)
    s.up()
    cluster.kubectl("create", "namespace", NS)
    return s


@pytest.fixture(scope="module")
def seen() -> Iterator[Seen]:
    s = Seen()
    yield s
    print(f"\nmode migration figures: {json.dumps(s.figures)}")


def resource_pod(name: str, count: int) -> dict[str, Any]:
    """A pod as written for device-plugin mode: `qualcomm.com/qaic: count` in limits, no
    claims; it shows its SoCs and stays until SIGTERM."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": WORKLOAD_UID,
                                         "runAsGroup": QAIC_GROUP_ID,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": "qaic", "image": "localhost/qaic-sample:e2e",
                         "imagePullPolicy": "Never", "command": show_command(stay=True),
                         "resources": {"limits": {QAIC: str(count)}},
                         "securityContext": {"allowPrivilegeEscalation": False,
                                             "capabilities": {"drop": ["ALL"]}}}]}}


def claim(name: str, count: int) -> dict[str, Any]:
    """A ResourceClaim for `count` SoCs of any SKU (class qaic.qualcomm.com)."""
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"devices": {"requests": [{"name": "socs", "exactly": {
                "deviceClassName": DRIVER, "count": count}}]}}}


def claim_pod(name: str, claim_name: str) -> dict[str, Any]:
    """The same pod holding ResourceClaim `claim_name` instead of an extended resource."""
    obj = resource_pod(name, 0)
    obj["spec"]["resourceClaims"] = [{"name": "socs", "resourceClaimName": claim_name}]
    obj["spec"]["containers"][0]["resources"] = {"claims": [{"name": "socs"}]}
    return obj


def events(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    return list(cluster.get("events", "-n", NS, "--field-selector",
                            f"involvedObject.name={name},reason={reason}")["items"])


def create(cluster: Cluster, obj: dict[str, Any]) -> None:
    cluster.kubectl("create", "-f", "-", input=json.dumps(obj))


def pod(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.get("pod", "-n", NS, name))


def running_at(watch: Watch, name: str, after: float = 0.0, timeout: float = 180) -> float:
    """When the watch saw pod `name` Running (time.monotonic()); a pod that failed instead
    (kubelet refused it at admission) fails the test with its status."""
    e = watch.first(f"pod {name} Running", lambda e: e.name == name and e.type != "DELETED"
                    and e.obj["status"].get("phase") in ("Running", "Failed"), timeout, after)
    assert e.obj["status"]["phase"] == "Running", e.obj["status"]
    return e.at


def seen_socs(cluster: Cluster, name: str) -> list[FakeSoc]:
    """The SoCs the pod's container sees (QAIC_VISIBLE_DEVICES), checked against its
    /dev/accel nodes."""
    by_qid = {s.qid: s for s in cluster.node.fake.socs}
    view = container_view(cluster, NS, name)
    socs = [by_qid[int(q)] for q in view.visible.split(",")]
    assert view.accels == {s.accel_index for s in socs}, (view, socs)
    return socs


def kubelet_holds(name: str) -> set[str]:
    """PCI addresses kubelet's PodResources lists for the pod under qualcomm.com/qaic."""
    return {i.split("::")[0] for d in held_devices() if d.pod == name and d.namespace == NS
            and d.resource_name == QAIC for i in d.device_ids}


def container(cluster: Cluster, name: str) -> tuple[str, int]:
    [cs] = pod(cluster, name)["status"]["containerStatuses"]
    return str(cs["containerID"]), int(cs["restartCount"])


def published(slices: list[dict[str, Any]]) -> set[str]:
    return {d["name"] for s in slices if s["spec"]["driver"] == DRIVER
            and s["spec"].get("nodeName") == NODE_NAME for d in s["spec"].get("devices") or ()}


def slice_devices(cluster: Cluster) -> set[str]:
    return published(cluster.get("resourceslices")["items"])


def claim_socs(cluster: Cluster, name: str) -> list[FakeSoc]:
    """The SoCs of the claim the scheduler made for the pod's extended resource."""
    status = pod(cluster, name)["status"]["extendedResourceClaimStatus"]
    return named_claim_socs(cluster, status["resourceClaimName"])


def named_claim_socs(cluster: Cluster, claim_name: str) -> list[FakeSoc]:
    claim = cluster.get("resourceclaim", "-n", NS, claim_name)
    by_device = {device_name(s.pci_address): s for s in cluster.node.fake.socs}
    results = claim["status"]["allocation"]["devices"]["results"]
    assert {r["driver"] for r in results} == {DRIVER}
    return [by_device[r["device"]] for r in results]


def node_qaic(cluster: Cluster) -> tuple[str | None, str | None]:
    status = cluster.get("node", NODE_NAME)["status"]
    return status.get("capacity", {}).get(QAIC), status.get("allocatable", {}).get(QAIC)


# ----- device-plugin mode ------------------------------------------------------------------


def test_a_device_plugin_pod_holds_two_socs(cluster: Cluster, stack: Stack, seen: Seen) -> None:
    """Operator situation: a cluster in device-plugin mode with a training pod running on
    two SoCs (`qualcomm.com/qaic: 2`), before the move."""
    assert node_qaic(cluster)[1] == str(len(cluster.node.fake.socs))
    watch = Watch(cluster, "pods", NS)
    try:
        create(cluster, resource_pod("dp-job", 2))
        running_at(watch, "dp-job")
    finally:
        watch.stop()
    seen.dp_socs = seen_socs(cluster, "dp-job")
    assert len(seen.dp_socs) == 2
    assert kubelet_holds("dp-job") == {s.pci_address for s in seen.dp_socs}
    seen.dp_container = container(cluster, "dp-job")


# ----- to DRA mode ---------------------------------------------------------------------------


def test_up_to_dra_keeps_the_pod_and_withholds_its_socs(
        cluster: Cluster, stack: Stack, seen: Seen) -> None:
    """Operator situation: `pulumi up` with allocationApi: dra while the pod runs. It keeps
    its container (same ID, no restart) and its SoCs (kubelet's record and what it sees);
    the device plugin is gone; the driver publishes every other SoC, not the two held (nor
    the card or any part of the card they are on)."""
    t0 = time.monotonic()
    stack.up(allocationApi="dra")
    seen.up_returned = time.monotonic()
    seen.figures["up_to_dra_s"] = round(time.monotonic() - t0, 1)
    assert cluster.kubectl("get", "daemonset", "-n", "qaic-system", "qaic-device-plugin",
                           check=False).returncode != 0  # deleted at the end of the up
    assert container(cluster, "dp-job") == seen.dp_container
    assert container(cluster, "dp-job")[1] == 0
    assert pod(cluster, "dp-job")["status"]["phase"] == "Running"
    held = {s.pci_address for s in seen.dp_socs}
    assert kubelet_holds("dp-job") == held
    assert {s.pci_address for s in seen_socs(cluster, "dp-job")} == held
    devices = slice_devices(cluster)  # the rollout awaited the driver's /readyz: slices in
    others = [s for s in cluster.node.fake.socs if s.pci_address not in held]
    assert {device_name(s.pci_address) for s in others} <= devices
    assert not {device_name(p) for p in held} & devices
    for card in {s.card_id for s in seen.dp_socs}:
        assert not any(d.startswith(card_device_name(card)) for d in devices), devices
    log = cluster.kubectl("logs", "-n", "qaic-system", "-l", DRIVER_SELECTOR,
                          "--tail=-1").stdout
    assert log.count("event=soc_withheld") == 2, log[-3000:]


def test_right_after_the_up_new_pods_are_served_by_dra(
        cluster: Cluster, stack: Stack, seen: Seen) -> None:
    """Operator situation: right after the `pulumi up` returns, new work arrives.

    A pod written for device-plugin mode (`qualcomm.com/qaic: 2`) is scheduled through the
    DeviceClass's extended resource while the node still lists qualcomm.com/qaic in its
    capacity (kubelet keeps it for its 5 minute grace period; the scheduler leaves the name
    to DRA where allocatable is 0): its claim gets two SoCs the old pod does not hold. A pod
    with a claim for the six SoCs left runs on exactly those. A third claim waits: nothing
    is free. (The first pod's container waits too, on 1.37.2: the next tests.)"""
    t0 = seen.up_returned
    capacity, allocatable = node_qaic(cluster)
    seen.figures["node_capacity_qaic_after_up"] = float(capacity or 0)
    seen.figures["node_allocatable_qaic_after_up"] = float(allocatable or 0)
    # kubelet reports allocatable 0 within nodeStatusUpdateFrequency of the plugin's end
    # (500 ms on this cluster, 10 s by default)
    cluster.wait_for("allocatable qualcomm.com/qaic 0", lambda: node_qaic(cluster)[1] in (
        None, "0"), timeout=60, every=0.1)
    seen.figures["up_returned_to_allocatable_0_s"] = round(time.monotonic() - t0, 2)
    held = {s.pci_address for s in seen.dp_socs}
    create(cluster, resource_pod("legacy", 2))

    def legacy_claim() -> bool:
        status = pod(cluster, "legacy")["status"].get("extendedResourceClaimStatus")
        return bool(status) and bool(cluster.get("resourceclaim", "-n", NS, status[
            "resourceClaimName"]).get("status", {}).get("allocation"))
    cluster.wait_for("legacy's extended-resource claim allocated", legacy_claim, timeout=60)
    legacy = {s.pci_address for s in claim_socs(cluster, "legacy")}
    assert len(legacy) == 2 and not legacy & held
    capacity, _ = node_qaic(cluster)
    seen.figures["node_capacity_qaic_when_legacy_scheduled"] = float(capacity or 0)
    left = len(cluster.node.fake.socs) - 4
    watch = Watch(cluster, "pods", NS)
    try:
        create(cluster, claim(f"job-{left}", left))
        create(cluster, claim_pod("claim-job", f"job-{left}"))
        at = running_at(watch, "claim-job")
    finally:
        watch.stop()
    seen.figures["up_returned_to_claim_pod_running_s"] = round(at - t0, 2)
    socs = {s.pci_address for s in named_claim_socs(cluster, f"job-{left}")}
    assert len(socs) == left and not socs & (held | legacy)
    assert {s.pci_address for s in seen_socs(cluster, "claim-job")} == socs
    create(cluster, claim("wait-2", 2))
    create(cluster, claim_pod("waiter", "wait-2"))
    cluster.wait_for("the waiter's FailedScheduling event",
                     lambda: bool(events(cluster, "waiter", "FailedScheduling")))
    assert pod(cluster, "waiter")["status"]["phase"] == "Pending"


def test_released_socs_are_published_and_taken(cluster: Cluster, stack: Stack,
                                               seen: Seen) -> None:
    """Operator situation: the old training pod is deleted. Its two SoCs appear in the
    driver's slices (within the driver's 2 s poll and one write of the pod's end) and the
    waiting claim's pod runs on exactly them."""
    held = {device_name(s.pci_address) for s in seen.dp_socs}
    slices, pods_ = Watch(cluster, "resourceslices"), Watch(cluster, "pods", NS)
    try:
        t0 = time.monotonic()
        cluster.kubectl("delete", "pod", "-n", NS, "dp-job", "--wait=false")
        gone = pods_.first("dp-job deleted", lambda e: e.name == "dp-job"
                           and e.type == "DELETED", timeout=60).at
        state: dict[str, dict[str, Any]] = {}

        def all_back(e: Any) -> bool:
            if e.type == "DELETED":
                state.pop(e.name, None)
            else:
                state[e.name] = e.obj
            return held <= published(list(state.values()))
        back = slices.first("the released SoCs in the slices", all_back, timeout=60).at
        running = running_at(pods_, "waiter", timeout=60)
    finally:
        slices.stop()
        pods_.stop()
    seen.figures["delete_to_dp_pod_gone_s"] = round(gone - t0, 2)
    # kubelet stops listing a pod in PodResources once its containers have ended, which can
    # be before the API's DELETED: this one may be negative.
    seen.figures["dp_pod_gone_to_socs_published_s"] = round(back - gone, 2)
    seen.figures["delete_to_socs_published_s"] = round(back - t0, 2)
    seen.figures["socs_published_to_waiter_running_s"] = round(running - back, 2)
    assert back - t0 < 20, seen.figures  # pod end + 2 s poll + a write, on a loaded machine
    assert sorted(s.pci_address for s in named_claim_socs(cluster, "wait-2")) == sorted(
        s.pci_address for s in seen.dp_socs)
    assert sorted(s.pci_address for s in seen_socs(cluster, "waiter")) == sorted(
        s.pci_address for s in seen.dp_socs)


# ----- and back --------------------------------------------------------------------------------


def test_back_to_device_plugin_mode_is_refused_while_claims_are_allocated(
        cluster: Cluster, stack: Stack) -> None:
    """Operator situation: `pulumi preview` and `up` with allocationApi: devicePlugin while
    DRA pods run. Both refuse with one error line naming the key, the claims and what to
    do; nothing is changed (the driver and the pods still run)."""
    proc = stack.preview(allocationApi="devicePlugin")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    # the Diagnostics section: this one error line and no other
    errors = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("error:")]
    assert len(errors) == 1, out[-3000:]
    line = errors[0]
    assert "'qaic-k8s:allocationApi' is 'devicePlugin', but 3 ResourceClaim(s) allocated by " \
        "qaic.qualcomm.com on its nodes are in use (" in line, line
    assert f"{NS}/job-6" in line and f"{NS}/legacy-extended-resources-" in line, line
    assert f"{NS}/wait-2" in line and "Delete those pods and claims" in line, line
    with pytest.raises(UpFailed, match=r"'qaic-k8s:allocationApi' is 'devicePlugin'"):
        stack.up(allocationApi="devicePlugin")
    assert cluster.get("daemonset", "-n", "qaic-system", "qaic-dra-driver")
    assert pod(cluster, "claim-job")["status"]["phase"] == "Running"


@pytest.mark.fleet  # 5 minutes of kubelet's grace period: `make e2e-full`, not `make e2e`
def test_a_pod_written_for_device_plugin_mode_starts_once_kubelet_forgot_the_plugin(
        cluster: Cluster, stack: Stack, seen: Seen) -> None:
    """Operator situation: the pod asking `qualcomm.com/qaic: 2` right after the up. Its
    claim was allocated and prepared at once, but kubelet 1.37.2 starts its container only
    once it has forgotten the device plugin's resource of that name: 5 minutes after the
    plugin stopped (kubelet's endpoint grace period) and with no pod of the device-plugin
    mode holding it (kubelet's GetDeviceRunContainerOptions does not skip DRA-backed
    extended resources; fixed upstream by kubernetes/kubernetes#141426). Until then kubelet
    retries, and says why in the pod's events. Then it runs on exactly its claim's SoCs."""
    waiting = pod(cluster, "legacy")["status"].get("containerStatuses") or [{}]
    said = " | ".join(sorted({e["message"] for e in events(cluster, "legacy", "Failed")}))
    print(f"\nlegacy pod while kubelet remembers the plugin: {waiting[0].get('state')}; "
          f"events: {said}")
    watch = Watch(cluster, "pods", NS)
    try:
        at = running_at(watch, "legacy", timeout=420)
    finally:
        watch.stop()
    seen.figures["up_returned_to_legacy_pod_running_s"] = round(
        at - seen.up_returned, 1)
    assert sorted(s.pci_address for s in seen_socs(cluster, "legacy")) == sorted(
        s.pci_address for s in claim_socs(cluster, "legacy"))


def test_back_to_device_plugin_mode_once_the_claims_are_gone(
        cluster: Cluster, stack: Stack, seen: Seen) -> None:
    """Operator situation: the DRA pods and claims are deleted, then the same `pulumi up`:
    it succeeds, the driver goes, the device plugin serves every SoC again and a pod asking
    `qualcomm.com/qaic: 2` runs on the two SoCs kubelet gives it."""
    cluster.kubectl("delete", "pod", "-n", NS, "legacy", "claim-job", "waiter", "--wait=true",
                    timeout=120)
    cluster.kubectl("delete", "resourceclaim", "-n", NS, "job-6", "wait-2", "--wait=true")
    cluster.wait_for("our claims gone", lambda: not cluster.get(
        "resourceclaims", "-n", NS)["items"], timeout=60)
    t0 = time.monotonic()
    stack.up(allocationApi="devicePlugin")
    seen.figures["up_back_to_device_plugin_s"] = round(time.monotonic() - t0, 1)
    n = str(len(cluster.node.fake.socs))
    cluster.wait_for("the device plugin's SoCs allocatable", lambda: node_qaic(cluster)[1] == n,
                     timeout=60)
    watch = Watch(cluster, "pods", NS)
    try:
        t1 = time.monotonic()
        create(cluster, resource_pod("dp-again", 2))
        seen.figures["dp_pod_running_after_up_back_s"] = round(
            running_at(watch, "dp-again") - t1, 2)
    finally:
        watch.stop()
    socs = seen_socs(cluster, "dp-again")
    assert len(socs) == 2 and kubelet_holds("dp-again") == {s.pci_address for s in socs}
    assert not cluster.get("daemonsets", "-n", "qaic-system", "-l", DRIVER_SELECTOR)["items"]
