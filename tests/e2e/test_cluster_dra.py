"""DRA mode on the real single-node cluster (issue 12 part 4): `pulumi up` of the e2e stack with
`allocationApi: dra`; the real scheduler allocates claims, the real kubelet has the driver
prepare them, containerd injects the per-claim CDI specs.

One cluster and one stack for the module; the tests run in file order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.cluster import NODE_NAME, Cluster
from cluster.inspect import container_view, pods
from cluster.stack import Stack, cluster_for_tests
from cluster.tools import missing_prerequisites
from cluster.watch import Watch
from qaic_device_plugin.dra.backend import device_name
from qaic_device_plugin.sim.node import FakeSoc
from workloads.samples import QAIC_GROUP_ID, WORKLOAD_UID, show_command

pytestmark = pytest.mark.e2e

DRIVER = "qaic.qualcomm.com"
DRIVER_NS, NS = "qaic-system", "qaic-workloads"
DRIVER_SELECTOR = "app.kubernetes.io/name=qaic-dra-driver"
CDI_DIR = Path("/var/run/cdi")
CHECKPOINT = Path("/var/lib/kubelet/plugins") / DRIVER / "checkpoint.json"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    why = missing_prerequisites(cdi=True)
    if why:
        pytest.skip("; ".join(why))
    with cluster_for_tests(cdi=True) as c:
        yield c


@pytest.fixture(scope="module")
def stack(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    s = Stack.create(cluster, tmp_path_factory.mktemp("stack"), allocationApi="dra")
    s.up()
    return s


def driver_pod(cluster: Cluster) -> dict[str, Any]:
    [pod] = [p for p in pods(cluster, DRIVER_NS, DRIVER_SELECTOR)
             if not p["metadata"].get("deletionTimestamp")]
    return pod


def driver_log(cluster: Cluster) -> str:
    return str(cluster.kubectl("logs", "-n", DRIVER_NS, driver_pod(cluster)["metadata"]["name"],
                               check=False).stdout)


def socs_of_claim(cluster: Cluster, claim: str) -> list[FakeSoc]:
    by_name = {device_name(s.pci_address): s for s in cluster.node.fake.socs}
    obj = cluster.get("resourceclaim", "-n", NS, claim)
    results = obj["status"]["allocation"]["devices"]["results"]
    assert {r["driver"] for r in results} == {DRIVER}
    return [by_name[r["device"]] for r in results]


def claim_of(pod: dict[str, Any]) -> str:
    """A named claim's name, or the one the claim controller generated from a template."""
    [ref] = pod["spec"]["resourceClaims"]
    if ref.get("resourceClaimName"):
        return str(ref["resourceClaimName"])
    [status] = pod["status"]["resourceClaimStatuses"]
    return str(status["resourceClaimName"])


def claim_uid(cluster: Cluster, claim: str) -> str:
    return str(cluster.get("resourceclaim", "-n", NS, claim)["metadata"]["uid"])


def cdi_spec(uid: str) -> Path:
    return CDI_DIR / f"{DRIVER}-claim_{uid}.json"


def check_view(cluster: Cluster, pod: dict[str, Any]) -> list[FakeSoc]:
    """The pod sees exactly its claim's SoCs: /dev/accel nodes and QAIC_VISIBLE_DEVICES.

    A finished pod's generated claim is gone (the claim controller deletes it): then the
    SoCs are those its QAIC_VISIBLE_DEVICES names, and its /dev/accel must match them."""
    view = container_view(cluster, NS, pod["metadata"]["name"])
    if pod["status"].get("phase") == "Succeeded":
        by_qid = {s.qid: s for s in cluster.node.fake.socs}
        socs = [by_qid[int(q)] for q in view.visible.split(",")]
    else:
        socs = socs_of_claim(cluster, claim_of(pod))
    assert view.accels == {s.accel_index for s in socs}, (view, socs)
    assert view.visible == ",".join(str(q) for q in sorted(s.qid for s in socs)), (view, socs)
    return socs


def claim_pod(name: str, claim: str) -> dict[str, Any]:
    """A pod of the restricted Pod Security level that holds ResourceClaim `claim`."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": WORKLOAD_UID,
                                "runAsGroup": QAIC_GROUP_ID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "resourceClaims": [{"name": "socs", "resourceClaimName": claim}],
            "containers": [{
                "name": "qaic", "image": "localhost/qaic-sample:e2e", "imagePullPolicy": "Never",
                "command": show_command(stay=True), "resources": {"claims": [{"name": "socs"}]},
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


def claim(name: str, requests: list[tuple[str, str, int]], same_card: bool = False) -> dict[
        str, Any]:
    devices: dict[str, Any] = {"requests": [
        {"name": r, "exactly": {"deviceClassName": cls, "count": n}} for r, cls, n in requests]}
    if same_card:
        devices["constraints"] = [{"requests": [r for r, _, _ in requests],
                                   "matchAttribute": f"{DRIVER}/cardID"}]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": NS}, "spec": {"devices": devices}}


def apply(cluster: Cluster, *objs: dict[str, Any]) -> None:
    cluster.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": list(objs)}))


def running(cluster: Cluster, name: str) -> bool:
    pod = cluster.get("pod", "-n", NS, name)
    return bool(pod["status"].get("phase") == "Running")


def await_running(cluster: Cluster, name: str) -> None:
    """Until the pod runs; a timeout says what the scheduler and kubelet said of it."""
    try:
        cluster.wait_for(f"pod {name} to run", lambda: running(cluster, name))
    except TimeoutError as exc:
        told = cluster.kubectl("describe", "pod", "-n", NS, name, check=False).stdout
        claims = cluster.kubectl("get", "resourceclaims", "-n", NS, "-o", "custom-columns="
                                 "NAME:.metadata.name,STATE:.status.allocation.devices.results"
                                 "[*].device", check=False).stdout
        slices = [(d["name"], d["attributes"].get("sku"))
                  for s in cluster.get("resourceslices")["items"] for d in s["spec"]["devices"]]
        raise AssertionError(f"{exc}\n{told[-3000:]}\n{claims}\nslices: {slices}\n"
                             f"driver log:\n{driver_log(cluster)[-4000:]}") from None


def create_claim_then_pod(cluster: Cluster, claim_obj: dict[str, Any], pod: dict[str, Any],
                          ) -> None:
    """The claim first and seen by the API, then its pod: the scheduler never meets a pod
    whose claim it cannot find yet."""
    apply(cluster, claim_obj)
    name = claim_obj["metadata"]["name"]
    cluster.wait_for(f"claim {name}", lambda: cluster.kubectl(
        "get", "resourceclaim", "-n", NS, name, check=False).returncode == 0)
    apply(cluster, pod)


# ----- after `pulumi up` ------------------------------------------------------------------


def test_driver_publishes_every_soc_in_its_node_slice(cluster: Cluster, stack: Stack) -> None:
    def slices() -> list[dict[str, Any]]:
        return [s for s in cluster.get("resourceslices")["items"]
                if s["spec"]["driver"] == DRIVER and s["spec"].get("nodeName") == NODE_NAME]
    cluster.wait_for("the driver's ResourceSlice", lambda: bool(slices()), timeout=120)
    devices = {d["name"]: d for s in slices() for d in s["spec"]["devices"]}
    socs = cluster.node.fake.socs
    assert set(devices) == {device_name(s.pci_address) for s in socs}
    for soc in socs:
        attrs = devices[device_name(soc.pci_address)]["attributes"]
        assert attrs["cardID"] == {"string": soc.card_id}
        assert attrs["qid"] == {"int": soc.qid}
        assert attrs["sku"] == {"string": soc.sku.value}
    pod = driver_pod(cluster)
    assert pod["status"]["phase"] == "Running"
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert not sc.get("privileged") and sc["capabilities"]["drop"] == ["ALL"]
    # Ready is the driver's /readyz, through kubelet's probe: registered, slices written.
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    cluster.wait_for("the driver pod Ready", lambda: any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in driver_pod(cluster)["status"].get("conditions", [])))


def test_samples_get_exactly_their_claimed_socs(cluster: Cluster, stack: Stack) -> None:
    def samples() -> dict[str, dict[str, Any]]:
        return {p["metadata"]["labels"]["app.kubernetes.io/name"]: p for p in pods(cluster, NS)}
    cluster.wait_for("the samples' pods to run or complete", lambda: len(samples()) == 3 and all(
        p["status"].get("phase") in ("Running", "Succeeded") for p in samples().values()))
    held: dict[str, list[FakeSoc]] = {app: check_view(cluster, p) for app, p in samples().items()}
    assert [len(held[a]) for a in ("qaic-pod-example", "qaic-inference", "qaic-ultra-4soc")] == [
        1, 1, 4]
    job = held["qaic-ultra-4soc"]
    assert len({s.card_id for s in job}) == 1 and {s.sku.value for s in job} == {"ultra"}
    running_ones = [s.pci_address for a in ("qaic-pod-example", "qaic-inference") for s in held[a]]
    assert len(set(running_ones)) == 2


def test_pod_status_shows_the_health_of_its_socs(cluster: Cluster, stack: Stack) -> None:
    """kubelet's ResourceHealthStatus (beta, on since 1.36) fed by our dra-health stream: the
    pod example's container status lists its SoC Healthy; a vanished device node on the node
    turns it Unhealthy there, and restoring the node turns it Healthy again."""
    [pod] = [p for p in pods(cluster, NS)
             if p["metadata"]["labels"]["app.kubernetes.io/name"] == "qaic-pod-example"]
    name = pod["metadata"]["name"]
    [soc] = socs_of_claim(cluster, claim_of(pod))
    device = device_name(soc.pci_address)

    def health() -> str | None:
        status = cluster.get("pod", "-n", NS, name)["status"]
        for cs in status.get("containerStatuses", []):
            for res in cs.get("allocatedResourcesStatus") or []:
                for r in res.get("resources", []):
                    # kubelet names a device by its first CDI ID: ...claim=<uid>-<device>
                    if r["resourceID"].endswith(device):
                        return str(r.get("health"))
        return None

    cluster.wait_for("the SoC Healthy in the pod's status", lambda: health() == "Healthy")
    cluster.node.fake.remove_device_node(soc.pci_address)
    try:
        cluster.wait_for("the SoC Unhealthy in the pod's status", lambda: health() == "Unhealthy")
    finally:
        cluster.node.fake.restore_device_node(soc.pci_address)
    cluster.wait_for("the SoC Healthy again", lambda: health() == "Healthy")


def test_a_claim_no_card_can_satisfy_stays_pending_with_the_reason(
    cluster: Cluster, stack: Stack,
) -> None:
    create_claim_then_pod(
        cluster, claim("five-on-one-card", [("socs", f"ultra.{DRIVER}", 5)], same_card=True),
        claim_pod("five-on-one-card", "five-on-one-card"))
    def reason() -> str:
        events = cluster.get("events", "-n", NS, "--field-selector",
                             "involvedObject.name=five-on-one-card,reason=FailedScheduling")
        return " ".join(e["message"] for e in events["items"])
    cluster.wait_for("the scheduler's FailedScheduling event", lambda: bool(reason()))
    assert "cannot allocate all claims" in reason(), reason()
    pod = cluster.get("pod", "-n", NS, "five-on-one-card")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    cluster.kubectl("delete", "pod,resourceclaim", "-n", NS, "five-on-one-card", "--wait=true")


def test_a_claim_for_two_skus_sees_all_of_its_socs(cluster: Cluster, stack: Stack) -> None:
    create_claim_then_pod(
        cluster, claim("two-skus", [("pro", f"pro.{DRIVER}", 1), ("std", f"std.{DRIVER}", 1)]),
        claim_pod("two-skus", "two-skus"))
    await_running(cluster, "two-skus")
    socs = check_view(cluster, cluster.get("pod", "-n", NS, "two-skus"))
    assert sorted(s.sku.value for s in socs) == ["pro", "std"]


def test_a_prioritized_list_request_reaches_the_container(cluster: Cluster, stack: Stack) -> None:
    """`firstAvailable` (DRAPrioritizedList, GA in 1.37): request `socs` is one Ultra SoC, else
    any SoC. The scheduler writes `socs/ultra` in the result; the container names
    `request: socs`, and kubelet gives it the devices whose request names contain `socs`, so
    the driver must answer with the parent request (before, the container got no device)."""
    claim_obj = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                 "metadata": {"name": "first-available", "namespace": NS},
                 "spec": {"devices": {"requests": [{"name": "socs", "firstAvailable": [
                     {"name": "ultra", "deviceClassName": f"ultra.{DRIVER}", "count": 1},
                     {"name": "any", "deviceClassName": DRIVER, "count": 1}]}]}}}
    pod = claim_pod("first-available", "first-available")
    pod["spec"]["containers"][0]["resources"]["claims"] = [{"name": "socs", "request": "socs"}]
    create_claim_then_pod(cluster, claim_obj, pod)
    await_running(cluster, "first-available")
    results = cluster.get("resourceclaim", "-n", NS, "first-available")[
        "status"]["allocation"]["devices"]["results"]
    assert [r["request"] for r in results] == ["socs/ultra"]
    [soc] = check_view(cluster, cluster.get("pod", "-n", NS, "first-available"))
    assert soc.sku.value == "ultra"
    cluster.kubectl("delete", "pod,resourceclaim", "-n", NS, "first-available", "--wait=true")


def test_prepared_claims_survive_a_driver_restart(cluster: Cluster, stack: Stack) -> None:
    uid = claim_uid(cluster, "two-skus")
    assert cdi_spec(uid).exists()
    assert uid in CHECKPOINT.read_text()
    old = driver_pod(cluster)["metadata"]["uid"]
    cluster.kubectl("delete", "pod", "-n", DRIVER_NS, "-l", DRIVER_SELECTOR, "--wait=true")
    cluster.wait_for("a new driver pod registered with kubelet", lambda: (
        driver_pod(cluster)["metadata"]["uid"] != old
        and "dra_registered" in driver_log(cluster)))
    assert cdi_spec(uid).exists() and uid in CHECKPOINT.read_text()
    assert running(cluster, "two-skus")


def test_deleting_the_pod_unprepares_its_claim(cluster: Cluster, stack: Stack) -> None:
    """The claim was prepared by the driver's previous process: the checkpoint carries it."""
    uid = claim_uid(cluster, "two-skus")
    cluster.kubectl("delete", "pod", "-n", NS, "two-skus", "--wait=true")
    cluster.wait_for("the claim's CDI spec to go", lambda: not cdi_spec(uid).exists())
    cluster.wait_for("the checkpoint to drop the claim", lambda: uid not in CHECKPOINT.read_text())
    cluster.kubectl("delete", "resourceclaim", "-n", NS, "two-skus", "--wait=true")


def our_slices(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in cluster.get("resourceslices")["items"]
            if s["spec"]["driver"] == DRIVER and s["spec"].get("nodeName") == NODE_NAME}


def device_names(slices: dict[str, dict[str, Any]]) -> set[str]:
    """Every device of the slices (counter-set slices have none)."""
    return {d["name"] for s in slices.values() for d in s["spec"].get("devices", [])}


def test_kubelet_restart_reregisters_the_driver(cluster: Cluster, stack: Stack) -> None:
    """Operator situation: kubelet restarts. The driver registers again, running pods are
    untouched, and the ResourceSlices the new kubelet deletes at start (all of its node's, in
    the background, maybe after the registration) are back within a second of that wipe."""
    before = driver_log(cluster).count("dra_registered")
    pod = next(p for p in pods(cluster, NS) if p["status"].get("phase") == "Running")
    container = pod["status"]["containerStatuses"][0]["containerID"]
    old = {n: s["metadata"]["uid"] for n, s in our_slices(cluster).items()}
    devices = device_names(our_slices(cluster))
    with Watch(cluster, "resourceslices") as watch:
        for name in old:  # the watch is open (its initial list) before kubelet goes
            watch.first(f"{name} listed", lambda e, n=name: e.name == n, timeout=30)
        restarted = time.monotonic()
        cluster.restart_kubelet()
        cluster.wait_for("the driver to register again",
                         lambda: driver_log(cluster).count("dra_registered") > before,
                         timeout=120)
        wiped = [watch.first(f"kubelet's wipe of {n}", lambda e, uid=uid: e.type == "DELETED"
                             and e.obj["metadata"]["uid"] == uid) for n, uid in old.items()]
        deleted = max(e.at for e in wiped)
        back = max(watch.first(f"{n} re-created", lambda e, n=n: e.type == "ADDED"
                               and e.name == n and e.obj["metadata"]["uid"] != old[n],
                               after=deleted, timeout=60).at for n in old)
    print(f"kubelet restart -> slices back: {back - restarted:.3f} s; "
          f"kubelet's wipe -> slices back: {(back - deleted) * 1000:.0f} ms")
    assert back - deleted < 1.0
    assert device_names(our_slices(cluster)) == devices
    cluster.wait_for("the driver pod Ready", lambda: any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in driver_pod(cluster)["status"].get("conditions", [])))
    again = cluster.get("pod", "-n", NS, pod["metadata"]["name"])
    assert again["status"]["containerStatuses"][0]["containerID"] == container


def test_destroy_leaves_no_claims_slices_or_specs(cluster: Cluster, stack: Stack) -> None:
    proc = stack.run("destroy", "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert cluster.get("resourceclaims", "-A")["items"] == []
    assert cluster.get("deviceclasses")["items"] == []
    assert not list(CDI_DIR.glob(f"{DRIVER}-claim_*.json"))
