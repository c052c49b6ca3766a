"""DRA mode on the real single-node cluster (issue 12 part 4): `pulumi up` of the e2e stack with
`allocationApi: dra`; the real scheduler allocates claims, the real kubelet has the driver
prepare them, containerd injects the per-claim CDI specs.

One cluster and one stack for the module; the tests run in file order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from dra_roll import PodWatch, kubelet_connections, longest_unusable

from cluster.cluster import NODE_NAME, Cluster
from cluster.inspect import container_view, pods
from cluster.stack import Stack, cluster_for_tests
from cluster.tools import missing_prerequisites
from cluster.watch import Watch
from qaic_device_plugin.dra.backend import MONITOR_DEVICE, device_name
from qaic_device_plugin.dra.cards import card_device_name
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.sim.node import CardSpec, FakeSoc
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
                  for s in cluster.get("resourceslices")["items"]
                  for d in s["spec"].get("devices", [])]
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
    devices = {d["name"]: d for s in slices() for d in s["spec"].get("devices", [])
               if d["attributes"].get("type", {"string": "soc"}) == {"string": "soc"}}
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


# ----- whole cards and pods written for device-plugin mode (issues 20.1, 20.3, 23) ---------
# Cards and parts of cards as devices with shared counters (dra/cards.py), the DeviceClasses'
# extended resources (infra/components/dra_classes.py) and the one-card rule
# (infra/components/one_card.py), on the node of 2 Ultra cards whose samples hold 2 SoCs of
# one. Helpers of the issue-20 block above are used. The SKU switch stays until destroy.

ULTRA_RES = "qualcomm.com/qaic-ultra"


def socs_of_devices(cluster: Cluster, names: list[str]) -> list[FakeSoc]:
    return [s for n in names for s in socs_of_device(cluster, n)]


def allocated(cluster: Cluster, claim_name: str) -> list[str]:
    return [r["device"] for r in results_of(cluster, claim_name)]


def ultra_cards(cluster: Cluster) -> dict[str, list[FakeSoc]]:
    out: dict[str, list[FakeSoc]] = {}
    for s in cluster.node.fake.socs:
        if s.sku.value == "ultra":
            out.setdefault(s.card_id, []).append(s)
    return out


def free_by_card(cluster: Cluster) -> dict[str, int]:
    held = held_socs(cluster)
    return {c: sum(s.pci_address not in held for s in socs)
            for c, socs in ultra_cards(cluster).items()}


def resource_pod(name: str, limits: dict[str, str]) -> dict[str, Any]:
    """A pod as written for device-plugin mode: extended resources in `limits`, no claims
    (restricted Pod Security level, like the samples)."""
    pod = claim_pod(name, "unused")
    del pod["spec"]["resourceClaims"]
    pod["spec"]["containers"][0]["resources"] = {"limits": limits}
    return pod


def extended_view(cluster: Cluster, name: str) -> list[FakeSoc]:
    """The pod's container sees exactly the SoCs of its extended-resource claim (the one the
    scheduler made, pod.status.extendedResourceClaimStatus): /dev/accel and QIDs."""
    pod = cluster.get("pod", "-n", NS, name)
    claim_name = pod["status"]["extendedResourceClaimStatus"]["resourceClaimName"]
    socs = socs_of_devices(cluster, allocated(cluster, claim_name))
    view = container_view(cluster, NS, name)
    assert view.accels == {s.accel_index for s in socs}, (view, socs)
    assert view.visible == ",".join(str(q) for q in sorted(s.qid for s in socs)), (view, socs)
    return socs


def scheduling_failures(cluster: Cluster, name: str) -> str:
    events = cluster.get("events", "-n", NS, "--field-selector",
                         f"involvedObject.name={name},reason=FailedScheduling")
    return " ".join(e["message"] for e in events["items"])


def card_claim(name: str, card: str | None = None, cls: str = f"ultra-card.{DRIVER}",
               ) -> dict[str, Any]:
    obj = claim(name, [("socs", cls, 1)])
    if card is not None:  # pin it to one card
        obj["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = [{"cel": {
            "expression": f'device.attributes["{DRIVER}"].cardID == "{card}"'}}]
    return obj


def delete(cluster: Cluster, *names: str) -> None:
    cluster.kubectl("delete", "pod,resourceclaim", "-n", NS, *names, "--ignore-not-found",
                    "--wait=true", timeout=120)


def test_each_ultra_card_is_published_whole_with_counters(cluster: Cluster, stack: Stack) -> None:
    """Issue 20.3: each proven Ultra card (the fake node's qaic-util names the SKU) is one
    device `card-<card>` plus its ten 2- and 3-SoC parts, all consuming per-SoC counters of
    the card's counter set, which lives in a slice of its own; Standard and Pro are SoCs only."""
    slices = [s for s in cluster.get("resourceslices")["items"]
              if s["spec"]["driver"] == DRIVER and s["spec"].get("nodeName") == NODE_NAME]
    counter_slices = [s for s in slices if s["spec"].get("sharedCounters")]
    assert counter_slices and all(not s["spec"].get("devices") for s in counter_slices)
    assert all(len(s["spec"].get("devices") or ()) <= 64 for s in slices)
    sets = {c["name"]: set(c["counters"]) for s in counter_slices
            for c in s["spec"]["sharedCounters"]}
    devices = slice_devices(cluster)
    cards = ultra_cards(cluster)
    assert len(cards) == 2 and len(sets) == 2
    for card_id, socs in cards.items():
        whole = devices[card_device_name(card_id)]
        assert whole["attributes"]["type"] == {"string": "card"}
        assert whole["attributes"]["socs"]["string"].split(",") == sorted(
            s.pci_address for s in socs)
        [use] = whole["consumesCounters"]
        assert set(use["counters"]) == sets[use["counterSet"]] == {
            device_name(s.pci_address) for s in socs}
        parts = [d for d in devices.values() if d["attributes"].get("cardID") == {
            "string": card_id} and d["attributes"]["type"] == {"string": "part"}]
        assert len(parts) == 6 + 4
    others = [s for s in cluster.node.fake.socs if s.sku.value != "ultra"]
    for s in others:
        assert not devices[device_name(s.pci_address)].get("consumesCounters")


def test_a_card_claim_gets_the_four_socs_of_one_card(cluster: Cluster, stack: Stack) -> None:
    """Issue 20.3: `count: 1` of class ultra-card.qaic.qualcomm.com is one card: the claim's
    CDI spec gives the container all four /dev/accel nodes and their four QIDs."""
    free = [c for c, n in free_by_card(cluster).items() if n == 4]
    assert free, free_by_card(cluster)
    create_claim_then_pod(cluster, card_claim("a-card"), claim_pod("a-card", "a-card"))
    try:
        await_running(cluster, "a-card")
        [device] = allocated(cluster, "a-card")
        socs = socs_of_devices(cluster, [device])
        assert len(socs) == 4 and len({s.card_id for s in socs}) == 1
        assert device == card_device_name(socs[0].card_id)
        view = container_view(cluster, NS, "a-card")
        assert view.accels == {s.accel_index for s in socs}
        assert view.visible == ",".join(str(q) for q in sorted(s.qid for s in socs))
    finally:
        delete(cluster, "a-card")


def test_a_soc_in_use_makes_its_card_unavailable_and_back(cluster: Cluster, stack: Stack) -> None:
    """Issue 20.3: with one SoC of the only free card claimed, a card claim stays Pending (the
    other card is partly used by the samples); once that SoC is released it gets the card."""
    free = [c for c, n in free_by_card(cluster).items() if n == 4]
    assert len(free) == 1, free_by_card(cluster)  # the samples hold part of the other card
    [card] = free
    one = card_claim("one-soc", card, cls=f"ultra.{DRIVER}")
    create_claim_then_pod(cluster, one, claim_pod("one-soc", "one-soc"))
    try:
        await_running(cluster, "one-soc")
        create_claim_then_pod(cluster, card_claim("card-later"),
                              claim_pod("card-later", "card-later"))
        cluster.wait_for("the card claim's FailedScheduling",
                         lambda: "cannot allocate all claims" in scheduling_failures(
                             cluster, "card-later"))
        assert not running(cluster, "card-later")
        delete(cluster, "one-soc")
        await_running(cluster, "card-later")
        assert allocated(cluster, "card-later") == [card_device_name(card)]
    finally:
        delete(cluster, "one-soc", "card-later")


def test_an_unchanged_pod_spec_runs_on_dra_nodes(cluster: Cluster, stack: Stack) -> None:
    """Issue 20.1, SKU mode off (the e2e stack): `limits: {qualcomm.com/qaic: 2}` as a
    device-plugin-mode pod writes it; the scheduler claims 2 SoCs of class qaic.qualcomm.com
    for it and the container sees exactly those."""
    apply(cluster, resource_pod("plain-two", {"qualcomm.com/qaic": "2"}))
    try:
        await_running(cluster, "plain-two")
        assert len(extended_view(cluster, "plain-two")) == 2
    finally:
        delete(cluster, "plain-two")


def test_sku_mode_makes_the_classes_serve_sku_resource_names(
    cluster: Cluster, stack: Stack,
) -> None:
    """One `pulumi up` with skuBasedResources: the SKU classes stand for qualcomm.com/qaic-<sku>
    and the one-card rule is in force (its policies created)."""
    stack.up(skuBasedResources="true")
    classes = {c["metadata"]["name"]: c["spec"].get("extendedResourceName")
               for c in cluster.get("deviceclasses")["items"]}
    assert classes[f"ultra.{DRIVER}"] == ULTRA_RES and classes[DRIVER] is None
    assert classes[f"ultra-card.{DRIVER}"] == "qualcomm.com/qaic-ultra-card"
    names = [p["metadata"]["name"] for p in cluster.get("mutatingadmissionpolicies")["items"]]
    assert "qaic-ultra-one-card" in names
    cluster.wait_for("the one-card rule in force", lambda: cluster.kubectl(
        "create", "--dry-run=server", "-f", "-", check=False,
        input=json.dumps(resource_pod("probe", {ULTRA_RES: "5"}))).returncode != 0)


def test_device_plugin_pods_keep_one_card(cluster: Cluster, stack: Stack) -> None:
    """Issue 23 (the same scenario as test_cluster.py's device-plugin test): with the first
    card partly used by the samples, `qaic-ultra: 4` gets the four SoCs of the free card,
    `qaic-ultra: 2` two SoCs of the partly used one, and another `qaic-ultra: 4` stays Pending
    with the scheduler's reason (no card has 4 free SoCs), never spread over cards."""
    room = free_by_card(cluster)
    assert sorted(room.values()) == [2, 4], room
    try:
        apply(cluster, resource_pod("four", {ULTRA_RES: "4"}))
        await_running(cluster, "four")
        pod = cluster.get("pod", "-n", NS, "four")
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {
            "qualcomm.com/qaic-ultra-card": "1"}
        assert "-> qualcomm.com/qaic-ultra-card 1" in pod["metadata"]["annotations"][
            "qaic.qualcomm.com/one-card"]
        four = extended_view(cluster, "four")
        assert len(four) == 4 and len({s.card_id for s in four}) == 1
        apply(cluster, resource_pod("two", {ULTRA_RES: "2"}))
        await_running(cluster, "two")
        two = extended_view(cluster, "two")
        assert len(two) == 2 and len({s.card_id for s in two}) == 1
        assert two[0].card_id != four[0].card_id
        apply(cluster, resource_pod("four-more", {ULTRA_RES: "4"}))
        cluster.wait_for("four-more's FailedScheduling",
                         lambda: bool(scheduling_failures(cluster, "four-more")))
        print("four-more pending:", scheduling_failures(cluster, "four-more"))
        assert "cannot allocate all claims" in scheduling_failures(cluster, "four-more")
        pending = cluster.get("pod", "-n", NS, "four-more")
        assert pending["status"]["phase"] == "Pending" and not pending["spec"].get("nodeName")
    finally:
        delete(cluster, "four", "two", "four-more")


def test_no_card_has_room_even_with_free_socs_on_two_cards(
    cluster: Cluster, stack: Stack,
) -> None:
    """Issue 23, DRA only: 5 Ultra SoCs are free (2 on one card, 3 on the other) and none
    is a whole card: `qaic-ultra: 4` stays Pending (device-plugin mode would place it across
    the two cards), and runs on the card as soon as that card is whole again."""
    card = next(c for c, n in free_by_card(cluster).items() if n == 4)
    create_claim_then_pod(cluster, card_claim("hold-one", card, cls=f"ultra.{DRIVER}"),
                          claim_pod("hold-one", "hold-one"))
    try:
        await_running(cluster, "hold-one")
        assert sorted(free_by_card(cluster).values()) == [2, 3]
        apply(cluster, resource_pod("four-later", {ULTRA_RES: "4"}))
        cluster.wait_for("four-later's FailedScheduling",
                         lambda: "cannot allocate all claims" in scheduling_failures(
                             cluster, "four-later"))
        delete(cluster, "hold-one")
        await_running(cluster, "four-later")
        assert {s.card_id for s in extended_view(cluster, "four-later")} == {card}
    finally:
        delete(cluster, "hold-one", "four-later")


def test_counts_no_card_holds_are_refused_at_admission(cluster: Cluster, stack: Stack) -> None:
    proc = cluster.kubectl("create", "-f", "-", check=False,
                           input=json.dumps(resource_pod("five", {ULTRA_RES: "5"})))
    assert proc.returncode != 0
    assert "qaic-ultra-one-card-counts" in proc.stderr
    assert "qaic=5" in proc.stderr and "multiple of 4 (whole cards)" in proc.stderr, proc.stderr


def test_one_soc_pods_and_claims_are_left_alone(cluster: Cluster, stack: Stack) -> None:
    """The rule touches only several Ultra SoCs: `qaic-ultra: 1` runs as written (no note),
    on an Ultra SoC; the samples with their claims keep running."""
    apply(cluster, resource_pod("one-ultra", {ULTRA_RES: "1"}))
    try:
        await_running(cluster, "one-ultra")
        pod = cluster.get("pod", "-n", NS, "one-ultra")
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {ULTRA_RES: "1"}
        assert "qaic.qualcomm.com/one-card" not in (pod["metadata"].get("annotations") or {})
        [soc] = extended_view(cluster, "one-ultra")
        assert soc.sku.value == "ultra"
    finally:
        delete(cluster, "one-ultra")
    assert all(p["status"].get("phase") in ("Running", "Succeeded") for p in pods(cluster, NS)
               if p["metadata"].get("labels", {}).get("app.kubernetes.io/part-of")
               == "qaic-k8s-samples")
    stack.up(skuBasedResources="false")  # the stack as the tests below expect it


# ----- issue 20: claim status, prioritized list, shared SoCs, the monitor ------------------
# Hot-added cards (fake node + host device nodes) that these tests remove again at the end.
ADDED: list[FakeSoc] = []


def slice_devices(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every device of the driver's slices on the node, SoCs, cards, parts and views alike."""
    return {d["name"]: d for s in cluster.get("resourceslices")["items"]
            if s["spec"]["driver"] == DRIVER and s["spec"].get("nodeName") == NODE_NAME
            for d in s["spec"].get("devices", [])}


def socs_of_device(cluster: Cluster, device: str) -> list[FakeSoc]:
    """A SoC device's SoC, a card's or part's SoCs (its `socs` attribute), or every SoC."""
    socs = cluster.node.fake.socs
    if device == MONITOR_DEVICE:
        return list(socs)
    by_name = {device_name(s.pci_address): s for s in socs}
    if device in by_name:
        return [by_name[device]]
    pcis = slice_devices(cluster)[device]["attributes"]["socs"]["string"].split(",")
    return [s for s in socs if s.pci_address in pcis]


def held_socs(cluster: Cluster) -> set[str]:
    """PCI addresses of the SoCs every claim in the cluster holds (adminAccess excluded)."""
    held: set[str] = set()
    for c in cluster.get("resourceclaims", "-A")["items"]:
        for r in (c.get("status", {}).get("allocation") or {}).get("devices", {}).get(
                "results", []):
            if r["driver"] == DRIVER and not r.get("adminAccess"):
                held |= {s.pci_address for s in socs_of_device(cluster, r["device"])}
    return held


def results_of(cluster: Cluster, claim_name: str, ns: str = NS) -> list[dict[str, Any]]:
    obj = cluster.get("resourceclaim", "-n", ns, claim_name)
    return list(obj["status"]["allocation"]["devices"]["results"])


def view_of(cluster: Cluster, pod: str, ns: str = NS) -> tuple[set[str], str]:
    """What the container saw: the PCI addresses behind its /dev/accel nodes, and its
    QAIC_VISIBLE_DEVICES."""
    view = container_view(cluster, ns, pod)
    by_accel = {s.accel_index: s.pci_address for s in cluster.node.fake.socs}
    return {by_accel[a] for a in view.accels}, view.visible


def qids(socs: list[FakeSoc]) -> str:
    return ",".join(str(q) for q in sorted(s.qid for s in socs))


def hot_add(cluster: Cluster, sku: Sku) -> list[FakeSoc]:
    """A card appears on the node (its SoCs' host device nodes with it), on NUMA node 1: after
    every SoC there in PCI-address order, so no running pod's QID shifts."""
    new = cluster.node.fake.add_card(CardSpec(sku, numa_node=1))
    for soc in new:
        cluster.node.mirror(soc.accel_index)
    ADDED.extend(new)
    return new


def test_claim_status_says_which_socs_a_claim_holds(cluster: Cluster, stack: Stack) -> None:
    """Issue 20.5: `kubectl describe resourceclaim` answers "which SoCs did I get": the driver
    writes its status.devices entry after prepare (PCI address, QID, device node, card, NUMA
    node, health; Ready and Healthy), through its service account with the stack's RBAC (the
    API server's per-driver, per-node check included), and follows a SoC going bad and back.
    Before, status.devices stayed empty."""
    [pod] = [p for p in pods(cluster, NS)
             if p["metadata"]["labels"]["app.kubernetes.io/name"] == "qaic-pod-example"]
    name = claim_of(pod)
    [soc] = socs_of_claim(cluster, name)
    device = device_name(soc.pci_address)

    def entry(obj: dict[str, Any]) -> dict[str, Any]:
        return next((d for d in obj.get("status", {}).get("devices") or []
                     if d["driver"] == DRIVER and d["device"] == device), {})

    def condition(obj: dict[str, Any], kind: str) -> str | None:
        return next((c["status"] for c in entry(obj).get("conditions", [])
                     if c["type"] == kind), None)

    with Watch(cluster, "resourceclaims", NS) as watch:
        got = watch.first("the driver's status entry", lambda e: e.name == name
                          and condition(e.obj, "Healthy") == "True").obj
        assert entry(got)["data"]["socs"] == [{
            "pciAddress": soc.pci_address, "qid": soc.qid,
            "devNode": f"/dev/accel/accel{soc.accel_index}", "sku": soc.sku.value,
            "cardID": soc.card_id, "health": "Healthy",
            **({"numaNode": soc.numa_node} if soc.numa_node is not None else {})}]
        assert condition(got, "Ready") == "True"
        described = cluster.kubectl("describe", "resourceclaim", "-n", NS, name).stdout
        assert soc.pci_address in described and "Prepared" in described, described
        start = time.monotonic()
        cluster.node.fake.remove_device_node(soc.pci_address)
        try:
            bad = watch.first("Healthy False", lambda e: e.name == name and condition(
                e.obj, "Healthy") == "False", after=start).obj
        finally:
            cluster.node.fake.restore_device_node(soc.pci_address)
        [healthy] = [c for c in entry(bad)["conditions"] if c["type"] == "Healthy"]
        assert healthy["reason"] == "DeviceNode", healthy
        assert f"/dev/accel/accel{soc.accel_index}" in healthy["message"], healthy
        watch.first("Healthy again", lambda e: e.name == name and condition(
            e.obj, "Healthy") == "True", after=start)


def test_the_4soc_sample_takes_a_whole_card_first_and_falls_back(
    cluster: Cluster, stack: Stack,
) -> None:
    """Issue 20.4: the 4-SoC job's claim template is a prioritized list: a whole Ultra card,
    else 4 SoCs of one card, else 4 Standard SoCs. With a card free the scheduler takes the
    first (`socs/card`): the container sees that card's four SoCs. With every Ultra card
    partly used (one SoC of each held) and four Standard SoCs free it takes the last
    (`socs/std`): four Standard SoCs, each of its own card."""
    [template] = cluster.get("resourceclaimtemplates", "-n", NS, "-l",
                             "app.kubernetes.io/name=qaic-ultra-4soc")["items"]
    spec = template["spec"]["spec"]
    assert [a["name"] for a in spec["devices"]["requests"][0]["firstAvailable"]] == [
        "card", "one-card", "std"]
    ultra = hot_add(cluster, Sku.ULTRA)  # a card surely free, and 4 Standard SoCs in all
    for _ in range(3):
        hot_add(cluster, Sku.STANDARD)
    card = card_device_name(ultra[0].card_id)
    cluster.wait_for("the hot-added cards published", lambda: card in slice_devices(cluster)
                     and all(device_name(s.pci_address) in slice_devices(cluster)
                             for s in ADDED), timeout=120)

    def prioritized(name: str) -> dict[str, Any]:
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": name, "namespace": NS}, "spec": spec}

    create_claim_then_pod(cluster, prioritized("prio-card"), claim_pod("prio-card", "prio-card"))
    await_running(cluster, "prio-card")
    [result] = results_of(cluster, "prio-card")
    assert result["request"] == "socs/card", result
    whole = socs_of_device(cluster, result["device"])
    assert len(whole) == 4 and len({s.card_id for s in whole}) == 1
    assert view_of(cluster, "prio-card") == ({s.pci_address for s in whole}, qids(whole))

    held = held_socs(cluster)
    cards = {s.card_id for s in cluster.node.fake.socs if s.sku is Sku.ULTRA}
    blockers = []
    for i, card_id in enumerate(sorted(cards)):
        if any(s.pci_address in held for s in cluster.node.fake.socs if s.card_id == card_id):
            continue  # partly used already
        name = f"prio-block-{i}"
        blocker = claim(name, [("socs", DRIVER, 1)])
        blocker["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = [{"cel": {
            "expression": f'device.attributes["{DRIVER}"].cardID == "{card_id}"'}}]
        create_claim_then_pod(cluster, blocker, claim_pod(name, name))
        blockers.append(name)
    for name in blockers:
        await_running(cluster, name)
    create_claim_then_pod(cluster, prioritized("prio-std"), claim_pod("prio-std", "prio-std"))
    await_running(cluster, "prio-std")
    results = results_of(cluster, "prio-std")
    assert {r["request"] for r in results} == {"socs/std"} and len(results) == 4, results
    std = [s for r in results for s in socs_of_device(cluster, r["device"])]
    assert {s.sku for s in std} == {Sku.STANDARD} and len({s.card_id for s in std}) == 4
    assert view_of(cluster, "prio-std") == ({s.pci_address for s in std}, qids(std))
    cluster.kubectl("delete", "pod,resourceclaim", "-n", NS, "prio-card", "prio-std",
                    *blockers, "--wait=true")


def test_shared_socs_hold_as_many_claims_as_the_stack_allows(
    cluster: Cluster, stack: Stack,
) -> None:
    """Issue 20.2: `allowedDeviceShares: 2` in DRA mode (refused before) rolls the driver,
    which publishes each SoC with consumable capacity (qaic.qualcomm.com/shares = 2, one a
    claim) and no card devices. Two claims for the one Pro SoC both run and see the same
    device node and QID; a third stays Pending; deleting the first sharer's pod removes only
    its CDI spec (the second keeps running in the same container) and frees the share the
    third then gets."""
    stack.up(allowedDeviceShares=2)
    try:
        cluster.wait_for("shared SoC devices published, no cards", lambda: all(
            d.get("allowMultipleAllocations") and d["capacity"]["shares"]["value"] == "2"
            for n, d in slice_devices(cluster).items() if n.startswith("soc-")) and not any(
            n.startswith("card-") for n in slice_devices(cluster)), timeout=120)
        [pro] = [s for s in cluster.node.fake.socs if s.sku is Sku.PRO]
        for i in (1, 2, 3):
            create_claim_then_pod(cluster, claim(f"share-{i}", [("socs", f"pro.{DRIVER}", 1)]),
                                  claim_pod(f"share-{i}", f"share-{i}"))
        await_running(cluster, "share-1")
        await_running(cluster, "share-2")
        shares = {}
        for i in (1, 2):
            [r] = results_of(cluster, f"share-{i}")
            assert r["device"] == device_name(pro.pci_address) and r["shareID"], r
            assert list(r["consumedCapacity"].values()) == ["1"], r  # one share
            shares[i] = r["shareID"]
            assert view_of(cluster, f"share-{i}") == ({pro.pci_address}, str(pro.qid))
        assert shares[1] != shares[2]

        def reason() -> str:
            events = cluster.get("events", "-n", NS, "--field-selector",
                                 "involvedObject.name=share-3,reason=FailedScheduling")
            return " ".join(e["message"] for e in events["items"])
        cluster.wait_for("the third sharer's FailedScheduling", lambda: bool(reason()))
        assert "cannot allocate all claims" in reason(), reason()
        assert not cluster.get("pod", "-n", NS, "share-3")["spec"].get("nodeName")

        uids = {i: claim_uid(cluster, f"share-{i}") for i in (1, 2)}
        container = cluster.get("pod", "-n", NS, "share-2")["status"]["containerStatuses"][0][
            "containerID"]
        cluster.kubectl("delete", "pod", "-n", NS, "share-1", "--wait=true")
        cluster.wait_for("the first sharer's spec removed", lambda: not cdi_spec(uids[1]).exists())
        assert cdi_spec(uids[2]).exists()
        await_running(cluster, "share-3")
        assert view_of(cluster, "share-3") == ({pro.pci_address}, str(pro.qid))
        again = cluster.get("pod", "-n", NS, "share-2")["status"]["containerStatuses"][0]
        assert again["containerID"] == container and again["ready"]
    finally:
        cluster.kubectl("delete", "pod,resourceclaim", "-n", NS, "share-1", "share-2",
                        "share-3", "--wait=true", "--ignore-not-found", check=False)
        stack.up(allowedDeviceShares=1)


MONITOR_NS = "qaic-monitoring"


def test_a_monitor_sees_every_soc_without_taking_one(cluster: Cluster, stack: Stack) -> None:
    """Issue 20.6: adminAccess is refused outside a namespace labelled for it (by the API
    server). `workloadMonitor` runs a DaemonSet in such a namespace whose pod claims the
    driver's view of every SoC with adminAccess: the container sees all the node's SoCs,
    including those other pods hold; a new claim still gets a SoC beside it; and with a SoC
    unhealthy a new monitor pod is still prepared (it wants the bad SoC too)."""
    outside = claim("admin-here", [("socs", DRIVER, 1)])
    outside["spec"]["devices"]["requests"][0]["exactly"]["adminAccess"] = True
    refused = cluster.kubectl("create", "-f", "-", input=json.dumps(outside), check=False)
    assert refused.returncode != 0
    assert "admin access to devices requires the `resource.kubernetes.io/admin-access: true` " \
        "label on the containing namespace" in refused.stderr, refused.stderr

    stack.up(workloadMonitor=True)
    try:
        socs = list(cluster.node.fake.socs)

        def monitor() -> dict[str, Any]:
            """The monitor's pod (empty while there is not exactly one that stays)."""
            live = [p for p in pods(cluster, MONITOR_NS)
                    if not p["metadata"].get("deletionTimestamp")]
            return live[0] if len(live) == 1 else {"metadata": {}, "status": {}}
        cluster.wait_for("the monitor running", lambda: monitor()["status"].get(
            "phase") == "Running")
        pod = monitor()
        [result] = results_of(cluster, claim_of(pod), MONITOR_NS)
        assert (result["device"], result.get("adminAccess")) == (MONITOR_DEVICE, True), result
        everything = ({s.pci_address for s in socs}, qids(socs))
        assert held_socs(cluster), "other pods hold SoCs meanwhile"
        assert view_of(cluster, pod["metadata"]["name"], MONITOR_NS) == everything

        create_claim_then_pod(cluster, claim("beside-monitor", [("socs", DRIVER, 1)]),
                              claim_pod("beside-monitor", "beside-monitor"))
        await_running(cluster, "beside-monitor")

        bad = socs[-1]
        cluster.node.fake.remove_device_node(bad.pci_address)
        try:
            cluster.wait_for("the bad SoC tainted", lambda: bool(slice_devices(cluster)[
                device_name(bad.pci_address)].get("taints")))
            old = pod["metadata"]["uid"]
            cluster.kubectl("delete", "pod", "-n", MONITOR_NS, pod["metadata"]["name"],
                            "--wait=true")
            cluster.wait_for("a new monitor running with the SoC unhealthy", lambda: (
                monitor()["metadata"].get("uid") not in (None, old)
                and monitor()["status"].get("phase") == "Running"))
            again = monitor()
            assert view_of(cluster, again["metadata"]["name"], MONITOR_NS) == everything
        finally:
            cluster.node.fake.restore_device_node(bad.pci_address)
    finally:
        cluster.kubectl("delete", "pod,resourceclaim", "-n", NS, "beside-monitor",
                        "--wait=true", "--ignore-not-found", check=False)
        stack.up(workloadMonitor=False)
        for soc in ADDED:  # the node as it was before this block
            cluster.node.fake.remove_soc(soc.pci_address)
            cluster.node.mirror(soc.accel_index, present=False)
        ADDED.clear()


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


def test_node_reboot_brings_claimed_pods_back_on_their_socs(cluster: Cluster, stack: Stack) -> None:
    """Operator situation: a node with running DRA jobs reboots (kernel update, power cut).
    Everything of the node dies at once; /var/run/cdi is a tmpfs and comes back empty; the
    kernel probes the SoCs again and hands out other accel numbers; kubelet, which keeps
    "prepared" in memory only, prepares every claim in use again. Each pod must run again on
    exactly the SoCs (PCI addresses) its claim holds, through the device nodes they have now,
    and the node must take a new claim. Before, the driver answered from its checkpoint with
    CDI devices whose specs were gone, and containerd refused those containers for good."""
    def restartable() -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in pods(cluster, NS)
                if p["status"].get("phase") == "Running" and p["spec"].get("resourceClaims")
                and p["spec"].get("restartPolicy", "Always") == "Always"}
    before = restartable()
    assert before, "no running claim-holding pod that restarts in place (a Deployment's)"
    held = {n: sorted(s.pci_address for s in socs_of_claim(cluster, claim_of(p)))
            for n, p in before.items()}
    containers = {n: p["status"]["containerStatuses"][0]["containerID"]
                  for n, p in before.items()}
    accel_before = {s.pci_address: s.accel_index for s in cluster.node.fake.socs}
    rebooted = time.monotonic()
    # probed in accel order rotated by one: every SoC takes another's number
    by_accel = sorted(accel_before, key=accel_before.__getitem__)
    cluster.reboot_node(probe_order=[*by_accel[1:], by_accel[0]])
    moved = {s.pci_address for s in cluster.node.fake.socs
             if s.accel_index != accel_before[s.pci_address]}
    assert moved & {pci for socs in held.values() for pci in socs}, "no held SoC moved"

    def back() -> bool:
        for name in before:
            statuses = cluster.get("pod", "-n", NS, name)["status"].get("containerStatuses")
            if not statuses or not statuses[0].get("ready") or (
                    statuses[0].get("containerID") == containers[name]):
                return False
        return True
    cluster.wait_for("every claimed pod running again in a new container", back, timeout=300)
    pods_back = time.monotonic() - rebooted
    for name in before:
        socs = check_view(cluster, cluster.get("pod", "-n", NS, name))
        assert sorted(s.pci_address for s in socs) == held[name], name
    create_claim_then_pod(cluster, claim("after-reboot", [("socs", DRIVER, 1)]),
                          claim_pod("after-reboot", "after-reboot"))
    await_running(cluster, "after-reboot")
    new_claim = time.monotonic() - rebooted
    check_view(cluster, cluster.get("pod", "-n", NS, "after-reboot"))
    print(f"node reboot -> claimed pods running again: {pods_back:.1f} s; "
          f"-> a new claim's pod running: {new_claim:.1f} s")
    cluster.kubectl("delete", "pod,resourceclaim", "-n", NS, "after-reboot", "--wait=true")


DRIVER_DIR = Path("/var/lib/kubelet/plugins") / DRIVER
WIPING_DELAY = 30  # kubelet's pkg/kubelet/cm/dra defaultWipingDelay, seconds


def slice_uids(cluster: Cluster) -> dict[str, str]:
    """Name -> UID of every ResourceSlice of the driver (a wiped and re-made one: a new UID)."""
    return {s["metadata"]["name"]: s["metadata"]["uid"]
            for s in cluster.get("resourceslices")["items"] if s["spec"]["driver"] == DRIVER}


def test_a_rolling_update_keeps_the_driver_registered_and_claims_valid(
    cluster: Cluster, stack: Stack,
) -> None:
    """Issue 19, operator situation: a changed setting rolls the driver's DaemonSet (`pulumi
    up`; maxSurge 1, maxUnavailable 0). The new pod runs beside the old one with its own
    sockets (named by its pod UID) and is Ready before the old one is deleted; kubelet always
    has a connected endpoint of the driver, so it never queues the slices for wiping (the
    slice objects are the same ones); a claim prepared by the old pod stays prepared and is
    unprepared by the new one; a new claim prepares after the roll."""
    cluster.wait_for("the driver pod Ready", lambda: any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in driver_pod(cluster)["status"].get("conditions", [])))
    create_claim_then_pod(cluster, claim("before-roll", [("socs", f"pro.{DRIVER}", 1)]),
                          claim_pod("before-roll", "before-roll"))
    await_running(cluster, "before-roll")
    before_uid = claim_uid(cluster, "before-roll")
    container = cluster.get("pod", "-n", NS, "before-roll")["status"]["containerStatuses"][0][
        "containerID"]
    slices = slice_uids(cluster)
    old = driver_pod(cluster)["metadata"]["uid"]
    watch = PodWatch([str(cluster.bins.kubectl), f"--kubeconfig={cluster.kubeconfig}"],
                     DRIVER_NS, DRIVER_SELECTOR)
    start = datetime.now()
    try:
        stack.up(healthPollSeconds=29)  # any change of the pod template rolls it
        cluster.wait_for("the old driver pod gone", lambda: all(
            p["metadata"]["uid"] != old for p in pods(cluster, DRIVER_NS, DRIVER_SELECTOR)))
        cluster.wait_for("the new driver pod Ready", lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in driver_pod(cluster)["status"].get("conditions", [])))
    finally:
        watch.stop()
    end = datetime.now()
    new = driver_pod(cluster)["metadata"]["uid"]
    assert watch.overlap() == (old, new), [(k, p["metadata"]["uid"]) for k, p in watch.events]
    changes = kubelet_connections(cluster.procs["kubelet"].log, DRIVER)
    assert str(DRIVER_DIR / f"dra-{new}.sock") in {c.endpoint for c in changes if c.at >= start}
    gap = longest_unusable(changes, start, end)
    print(f"rolling update: {(end - start).total_seconds():.1f} s, longest stretch without a "
          f"connected driver endpoint in kubelet: {gap:.3f} s")
    assert gap == 0.0, changes[-10:]
    assert slice_uids(cluster) == slices

    pod = cluster.get("pod", "-n", NS, "before-roll")
    assert pod["status"]["containerStatuses"][0]["containerID"] == container
    assert cdi_spec(before_uid).exists() and before_uid in CHECKPOINT.read_text()
    create_claim_then_pod(cluster, claim("after-roll", [("socs", f"std.{DRIVER}", 1)]),
                          claim_pod("after-roll", "after-roll"))
    await_running(cluster, "after-roll")
    check_view(cluster, cluster.get("pod", "-n", NS, "after-roll"))
    cluster.kubectl("delete", "pod", "-n", NS, "before-roll", "--wait=true")
    cluster.wait_for("the new driver to unprepare the old pod's claim",
                     lambda: not cdi_spec(before_uid).exists()
                     and before_uid not in CHECKPOINT.read_text())
    cluster.kubectl("delete", "pod", "-n", NS, "after-roll", "--wait=true")
    cluster.kubectl("delete", "resourceclaim", "-n", NS, "after-roll", "before-roll",
                    "--wait=true")


def test_destroy_leaves_no_claims_slices_or_specs(cluster: Cluster, stack: Stack) -> None:
    """`pulumi destroy` with the node staying: no claim, DeviceClass or CDI spec at once, and
    the driver's ResourceSlices go too. The driver does not withdraw them when it stops (a
    restart or an update must not pull the node's devices); kubelet deletes a driver's slices
    30 s after its last endpoint went (DRAPluginManager's wipingDelay), and meanwhile no
    DeviceClass of ours is left to allocate them through."""
    assert slice_uids(cluster)
    proc = stack.run("destroy", "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    destroyed = datetime.now()
    assert cluster.get("resourceclaims", "-A")["items"] == []
    assert cluster.get("deviceclasses")["items"] == []
    assert not list(CDI_DIR.glob(f"{DRIVER}-claim_*.json"))
    cluster.wait_for("kubelet to delete the driver's ResourceSlices",
                     lambda: not slice_uids(cluster), timeout=WIPING_DELAY + 30)
    print(f"ResourceSlices gone {(datetime.now() - destroyed).total_seconds():.1f} s after "
          f"destroy returned")
