"""Reading the fleet the way an operator would, for tests/e2e/test_fleet.py: what each node
offers, which node's SoCs a claim got and what its pod sees, whether a node still holds a
claim (CDI spec, driver checkpoint), what kubelet says a pod holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleet_objects import DRIVER, NS, Obj

from cluster.controlplane import ControlPlane
from cluster.fleet import Fleet, FleetNode
from cluster.inspect import (
    POD_RESOURCES,
    allocatable,
    container_view,
    held_devices,
    qaic_resources,
)
from qaic_device_plugin.dra.backend import device_name
from qaic_device_plugin.sim.node import FakeSoc

CHECKPOINT = Path("/var/lib/kubelet/plugins") / DRIVER / "checkpoint.json"
CDI_DIR = Path("/var/run/cdi")


def live_pods(cluster: ControlPlane, selector: str) -> list[Obj]:
    return [p for p in cluster.get("pods", "-n", NS, "-l", selector)["items"]
            if not p["metadata"].get("deletionTimestamp")]


def claim_of(pod_obj: Obj) -> str:
    """The pod's claim: named, or generated from its template."""
    [ref] = pod_obj["spec"]["resourceClaims"]
    if ref.get("resourceClaimName"):
        return str(ref["resourceClaimName"])
    [status] = pod_obj["status"]["resourceClaimStatuses"]
    return str(status["resourceClaimName"])


def allocated(cluster: ControlPlane, claim_name: str) -> list[Obj]:
    """The claim's allocation results (driver, pool = node, device)."""
    obj = cluster.get("resourceclaim", "-n", NS, claim_name)
    return list(obj["status"]["allocation"]["devices"]["results"])


def socs_of(node: FleetNode, results: list[Obj]) -> list[FakeSoc]:
    """The node's SoCs a claim's results name; every result must be from that node's pool."""
    by_name = {device_name(s.pci_address): s for s in node.fake.socs}
    assert {(r["driver"], r["pool"]) for r in results} == {(DRIVER, node.name)}, results
    return [by_name[r["device"]] for r in results]


def check_view(fleet: Fleet, pod_obj: Obj) -> list[FakeSoc]:
    """The pod runs on the node its claim's SoCs are on, and sees exactly them: its
    /dev/accel entries and QAIC_VISIBLE_DEVICES (that node's QIDs)."""
    node = fleet.nodes[pod_obj["spec"]["nodeName"]]
    socs = socs_of(node, allocated(fleet, claim_of(pod_obj)))
    view = container_view(fleet, NS, pod_obj["metadata"]["name"])
    assert view.accels == {s.accel_index for s in socs}, (view, socs)
    assert view.visible == ",".join(str(q) for q in sorted(s.qid for s in socs)), (view, socs)
    return socs


def node_slices(cluster: ControlPlane, node: str) -> list[Obj]:
    return [s for s in cluster.get("resourceslices")["items"]
            if s["spec"]["driver"] == DRIVER and s["spec"].get("nodeName") == node]


def published_socs(cluster: ControlPlane, node: str) -> dict[str, Obj]:
    """The SoC devices of the node's slices by name (a driver may also publish whole cards
    and parts of them: devices typed card or part; untyped ones are SoCs)."""
    return {d["name"]: d for s in node_slices(cluster, node) for d in s["spec"].get(
        "devices", []) if d["attributes"].get("type", {"string": "soc"}) == {"string": "soc"}}


def holds_claim(node: FleetNode, uid: str) -> dict[str, bool]:
    """Whether the node still has the claim prepared: a CDI spec naming it in its
    /var/run/cdi, the claim in its driver's checkpoint."""
    cdi = node.host_path(CDI_DIR)
    checkpoint = node.host_path(CHECKPOINT)
    return {
        "cdi": any(uid in p.name or uid in p.read_text(errors="replace")
                   for p in cdi.glob("*") if p.is_file()),
        "checkpoint": checkpoint.exists() and uid in checkpoint.read_text(),
    }


def offered(fleet: Fleet) -> dict[str, dict[str, int]]:
    """Each node's allocatable qualcomm.com resources that are not zero."""
    return {name: {k: v for k, v in qaic_resources(allocatable(fleet, name)).items() if v}
            for name in fleet.nodes}


def daemon_pods(fleet: Fleet, namespace: str) -> dict[str, dict[str, Any]]:
    """The running DaemonSet pods of `namespace` by node, on nodes of the fleet (a removed
    node's pod shows Running until the pod garbage collector deletes it)."""
    return {p["spec"]["nodeName"]: p for p in fleet.get("pods", "-n", namespace)["items"]
            if not p["metadata"].get("deletionTimestamp")
            and p["status"].get("phase") == "Running" and p["spec"]["nodeName"] in fleet.nodes}


def container(pod_obj: Obj) -> tuple[str, int]:
    """Its (first) container's ID and restart count: the same container, never restarted."""
    status = pod_obj["status"]["containerStatuses"][0]
    return str(status["containerID"]), int(status["restartCount"])


def devices_of(node: FleetNode, pod_name: str) -> list[str]:
    """The device IDs kubelet's PodResources API says the pod's containers hold (one entry
    per device)."""
    return sorted(i for d in held_devices(node.host_path(POD_RESOURCES)) if d.pod == pod_name
                  for i in d.device_ids)


def waiting_reason(fleet: Fleet, pod_name: str) -> str:
    events = fleet.get("events", "-n", NS, "--field-selector",
                       f"involvedObject.name={pod_name},reason=FailedScheduling")
    return " ".join(e["message"] for e in events["items"])
