"""Issue 19, the prepare path of DRA mode, with the real qaic driver (dra/backend.py), the real
checkpoint and node service, over real gRPC and Unix sockets to the kubelet stand-in, on a
fake node written like the kernel's sysfs. The API server's part (a claim's allocation) is a
dict here: the process-level variant against a real kube-apiserver is in test_dra_e2e.py.

- a node reboot: CDI specs on a tmpfs are gone and accel numbers re-probed; the prepare that
  kubelet sends again rebuilds the spec with the new device nodes;
- an unhealthy SoC is prepared for a claim that tolerates its taint or has adminAccess, and
  refused otherwise with the SoC's address, host device node and what to do;
- `cardID` is shared only by SoCs whose card is proven;
- the CDI spec says the lowest version it needs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qaic_device_plugin.core.cdi_version import minimum_version
from qaic_device_plugin.dra.backend import (
    DRIVER_NAME,
    TAINT_UNHEALTHY,
    QaicDraDriver,
    cdi_spec_path,
    device_name,
)
from qaic_device_plugin.kubelet.api.dra_v1 import api_pb2 as dra_pb
from qaic_device_plugin.kubelet.dra.checkpoint import Checkpoint
from qaic_device_plugin.kubelet.dra.node import NodeService
from qaic_device_plugin.kubelet.dra.plugin import DraPlugin
from qaic_device_plugin.kubelet.dra.types import (
    AllocatedClaim,
    AllocatedDevice,
    ClaimRef,
    PrepareError,
    Toleration,
)
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic.model import QaicUtilEntry, Sku
from qaic_device_plugin.qaic.sku import SKU_TYPE_TEXT
from qaic_device_plugin.sim.dra_kubelet import DraKubeletSim
from qaic_device_plugin.sim.node import CardSpec, FakeNode, FakeSoc

NODE = "node-1"


def qaic_util(node: FakeNode) -> list[QaicUtilEntry]:
    """What qaic-util prints for the node: every SoC Ready with its firmware SKU."""
    return [QaicUtilEntry(s.qid, s.pci_address, "Ready", SKU_TYPE_TEXT[s.sku]) for s in node.socs]


@dataclass
class Claims:
    """The API server's part: allocations by claim UID."""

    allocated: dict[str, AllocatedClaim] = field(default_factory=dict)

    def allocate(self, ref: ClaimRef, *devices: AllocatedDevice) -> ClaimRef:
        self.allocated[ref.uid] = AllocatedClaim(ref, devices)
        return ref

    async def get(self, ref: ClaimRef) -> AllocatedClaim:
        if ref.uid not in self.allocated:
            raise PrepareError("claim not allocated")
        return self.allocated[ref.uid]


class Driver:
    """The DRA side of one plugin process: inventory, qaic driver, checkpoint, sockets."""

    def __init__(self, node: FakeNode, dirs: Path, claims: Claims) -> None:
        self.node, self.dirs, self.claims = node, dirs, claims
        self.cdi_dir = dirs / "cdi"
        self.plugin: DraPlugin | None = None

    async def start(self) -> DraPlugin:
        """What a (re)started process does: scan the node, load the checkpoint, serve."""
        state = Inventory(self.node.sysfs_root, self.node.dev_root, {}).scan(qaic_util(self.node))
        backend = QaicDraDriver(NODE, self.cdi_dir)
        backend.update(state.socs)
        checkpoint = Checkpoint(self.dirs / "plugins" / DRIVER_NAME / "checkpoint.json")
        checkpoint.load()
        self.plugin = DraPlugin(
            DRIVER_NAME, NodeService(backend, self.claims, checkpoint),
            plugins_dir=self.dirs / "plugins", registry_dir=self.dirs / "registry",
            resync_seconds=30.0,
        )
        await self.plugin.start()
        return self.plugin

    async def stop(self) -> None:
        if self.plugin is not None:
            await self.plugin.close()
            self.plugin = None


@pytest.fixture
async def kubelet(dirs: Path) -> AsyncIterator[DraKubeletSim]:
    async with DraKubeletSim(dirs / "registry") as sim:
        yield sim


@pytest.fixture
async def driver(node: FakeNode, dirs: Path) -> AsyncIterator[Driver]:
    d = Driver(node, dirs, Claims())
    yield d
    await d.stop()


def on(soc: FakeSoc, request: str = "socs", **kw: Any) -> AllocatedDevice:
    return AllocatedDevice(request, NODE, device_name(soc.pci_address), **kw)


def spec_of(driver: Driver, uid: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(cdi_spec_path(driver.cdi_dir, uid).read_text())
    return spec


def nodes_in(spec: dict[str, Any]) -> list[str]:
    return sorted(n["path"] for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"])


def accel_paths(socs: list[FakeSoc]) -> list[str]:
    return sorted(f"/dev/accel/accel{s.accel_index}" for s in socs)


def node_of_device(spec: dict[str, Any], uid: str) -> dict[str, str]:
    """CDI device `<uid>-<device>` -> its device node path."""
    return {d["name"].removeprefix(f"{uid}-"): n["path"]
            for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"]}


def node_of_soc(socs: list[FakeSoc]) -> dict[str, str]:
    return {device_name(s.pci_address): f"/dev/accel/accel{s.accel_index}" for s in socs}


async def prepare(kubelet: DraKubeletSim, ref: ClaimRef) -> dra_pb.NodePrepareResourceResponse:
    resp = await kubelet.prepare(DRIVER_NAME, [ref])
    return resp.claims[ref.uid]


@pytest.mark.parametrize("cdi_dir_survives", [False, True], ids=["tmpfs", "persistent"])
async def test_node_reboot_rebuilds_the_claims_cdi_spec_for_the_new_accel_nodes(
    node: FakeNode, driver: Driver, kubelet: DraKubeletSim, cdi_dir_survives: bool
) -> None:
    """Operator situation: a node reboot with a pod whose claim was prepared. The checkpoint
    (under /var/lib/kubelet) survives; /var/run/cdi is a tmpfs and comes back empty, and the
    qaic driver probes asynchronously, so a SoC may come back at another /dev/accel/accelN.
    kubelet keeps "prepared" in memory only and sends prepare again: the answer is the same
    devices and CDI IDs, and the spec exists again naming the SoCs' new device nodes. With a
    persistent cdiDir the spec survives but names the old nodes: it is rewritten all the same.
    """
    card = [s for s in node.socs if s.card_id == node.socs[0].card_id]
    assert len(card) == 4
    ref = driver.claims.allocate(ClaimRef("ns", "a1b2-uid", "four"), *(on(s) for s in card))
    await driver.start()
    await kubelet.wait_registered(DRIVER_NAME)
    before = await prepare(kubelet, ref)
    assert before.error == ""
    assert node_of_device(spec_of(driver, ref.uid), ref.uid) == node_of_soc(card)

    await driver.stop()  # the node goes down
    if not cdi_dir_survives:
        shutil.rmtree(driver.cdi_dir)
    node.reload_driver(probe_order=[s.pci_address for s in node.socs])  # in PCI order, this time
    moved = [s for s in node.socs if s.pci_address in {c.pci_address for c in card}]
    changed = node_of_soc(moved).items() - node_of_soc(card).items()
    assert len(changed) == 4, "the re-probe must give each of the card's SoCs another node"
    await driver.start()
    await kubelet.wait_registered(DRIVER_NAME, count=2)

    after = await prepare(kubelet, ref)
    assert after == before  # same devices, requests and CDI IDs
    spec = spec_of(driver, ref.uid)
    assert node_of_device(spec, ref.uid) == node_of_soc(moved)
    assert sorted(i for d in after.devices for i in d.cdi_device_ids) == sorted(
        f"{DRIVER_NAME}/claim={d['name']}" for d in spec["devices"])
    assert (await kubelet.unprepare(DRIVER_NAME, [ref])).claims[ref.uid].error == ""
    assert not cdi_spec_path(driver.cdi_dir, ref.uid).exists()


async def test_unhealthy_soc_is_prepared_only_for_a_claim_that_tolerates_it(
    node: FakeNode, driver: Driver, kubelet: DraKubeletSim
) -> None:
    """A SoC whose device node vanished is published with the NoSchedule taint
    qaic.qualcomm.com/unhealthy=device-node. The scheduler still allocates it to a claim that
    tolerates the taint or asks for adminAccess (monitoring, diagnostics); prepare honours
    both. Any other claim is refused with the SoC's PCI address and its device node as on the
    host (not where this process sees /dev), and what to do."""
    sick = node.socs[:5]
    for s in sick:
        node.remove_device_node(s.pci_address)
    exists = Toleration(TAINT_UNHEALTHY, "Exists", "", "NoSchedule")
    equal = Toleration(TAINT_UNHEALTHY, "Equal", "device-node", "")
    wrong_value = Toleration(TAINT_UNHEALTHY, "Equal", "ras", "NoSchedule")
    wrong_effect = Toleration(TAINT_UNHEALTHY, "Exists", "", "NoExecute")
    c = driver.claims
    strict = c.allocate(ClaimRef("ns", "u1", "strict"), on(sick[0]))
    tolerant = c.allocate(ClaimRef("ns", "u2", "tolerant"), on(sick[1], tolerations=(exists,)))
    by_value = c.allocate(ClaimRef("ns", "u3", "by-value"), on(sick[2], tolerations=(equal,)))
    admin = c.allocate(ClaimRef("ns", "u4", "admin"), on(sick[3], admin_access=True))
    mismatched = c.allocate(
        ClaimRef("ns", "u5", "mismatched"), on(sick[4], tolerations=(wrong_value, wrong_effect)))
    await driver.start()
    await kubelet.wait_registered(DRIVER_NAME)
    resp = await kubelet.prepare(DRIVER_NAME, [strict, tolerant, by_value, admin, mismatched])

    for ok, soc in ((tolerant, sick[1]), (by_value, sick[2]), (admin, sick[3])):
        got = resp.claims[ok.uid]
        assert got.error == "" and [d.device_name for d in got.devices] == [
            device_name(soc.pci_address)], ok
        assert nodes_in(spec_of(driver, ok.uid)) == accel_paths([soc])
    for refused, soc in ((strict, sick[0]), (mismatched, sick[4])):
        error = resp.claims[refused.uid].error
        host = f"/dev/accel/accel{soc.accel_index}"
        assert error == (
            f"prepare ns/{refused.name}: SoC {soc.pci_address} ({host}) is unhealthy: "
            f"device-node: {host} is missing. Delete the pod to get another SoC, or tolerate "
            f"the taint {TAINT_UNHEALTHY} in the claim"
        )
        assert str(node.dev_root) not in error
        assert not cdi_spec_path(driver.cdi_dir, refused.uid).exists()


async def test_a_claim_from_a_prioritized_list_names_its_parent_request(
    node: FakeNode, driver: Driver, kubelet: DraKubeletSim
) -> None:
    """`firstAvailable: [{name: ultra, ...}, {name: any, ...}]` under request `socs`: the
    scheduler writes `socs/ultra` in the result; the container says `request: socs`, and
    kubelet gives it the devices whose request names contain `socs`."""
    ref = driver.claims.allocate(ClaimRef("ns", "u1", "prio"), on(node.socs[0], "socs/ultra"),
                                 on(node.socs[1], "socs/ultra"))
    await driver.start()
    await kubelet.wait_registered(DRIVER_NAME)
    got = await prepare(kubelet, ref)
    assert got.error == ""
    assert [list(d.request_names) for d in got.devices] == [["socs"], ["socs"]]


def test_card_id_is_shared_only_where_the_card_is_proven(tmp_path: Path) -> None:
    """Four single-SoC cards behind a server board's PCIe switch look like one Ultra card in
    sysfs. Without qaic-util nothing proves a grouping, so every SoC is published as a card
    of its own, and `matchAttribute: cardID` cannot put a "one card" job on four cards. With
    qaic-util's SKUs the Ultra card's four SoCs share its cardID and the others stay apart."""
    singles = [CardSpec(Sku.STANDARD, platform_switch=0)] * 3 + [
        CardSpec(Sku.PRO, platform_switch=0)]
    node = FakeNode(tmp_path / "node", [*singles, CardSpec(Sku.ULTRA)])
    node.write()
    inventory = Inventory(node.sysfs_root, node.dev_root, {})

    def card_ids(util: list[QaicUtilEntry] | None) -> dict[str, str]:
        backend = QaicDraDriver(NODE, tmp_path / "cdi")
        devices = backend.update(inventory.scan(util).socs)
        out: dict[str, str] = {}
        for d in devices:
            attrs = d.to_dict()["attributes"]
            if attrs.get("type", {"string": "soc"})["string"] != "soc":
                continue  # a whole card or part of one (dra/cards.py), only on proven cards
            out[attrs["resource.kubernetes.io/pciBusID"]["string"]] = attrs["cardID"]["string"]
        return out

    blind = card_ids(None)
    assert blind == {s.pci_address: s.pci_address for s in node.socs}
    proven = card_ids(qaic_util(node))
    assert proven == {s.pci_address: s.card_id for s in node.socs}
    ultra = {s.card_id for s in node.socs if s.sku is Sku.ULTRA}
    assert len(ultra) == 1 and ultra != {s.pci_address for s in node.socs if s.sku is Sku.ULTRA}


@pytest.mark.parametrize(("uid", "version"), [("a1b2c3", "0.3.0"), ("9f8e7d", "0.5.0")])
async def test_claim_spec_says_the_lowest_cdi_version_it_needs(
    node: FakeNode, driver: Driver, kubelet: DraKubeletSim, uid: str, version: str
) -> None:
    """The claim spec uses spec-level env and deviceNodes with path and permissions: CDI 0.3.0.
    Its device names begin with the claim's UID, and a name beginning with a digit needs 0.5.0.
    containerd 1.7.0 to 1.7.11 refuse a spec saying 0.6.0 (their CDI library knows 0.5.0)."""
    ref = driver.claims.allocate(ClaimRef("ns", uid, "one"), on(node.socs[0]))
    await driver.start()
    await kubelet.wait_registered(DRIVER_NAME)
    assert (await prepare(kubelet, ref)).error == ""
    assert spec_of(driver, uid)["cdiVersion"] == version


def test_minimum_cdi_version_follows_the_spec_version_table() -> None:
    """The features of each CDI release (SPEC.md "Released versions"; the Go package's
    MinimumRequiredVersion), lowest first."""
    def spec(**edits: Any) -> dict[str, Any]:
        return {"kind": "qaic.qualcomm.com/claim",
                "devices": [{"name": "a", "containerEdits": edits}]}

    base = spec(env=["A=1"], deviceNodes=[{"path": "/dev/accel/accel1", "permissions": "rw"}])
    assert minimum_version(base) == "0.3.0"
    assert minimum_version(spec(mounts=[{"hostPath": "/a", "containerPath": "/a",
                                         "type": "bind"}])) == "0.4.0"
    assert minimum_version(spec(deviceNodes=[{"path": "/a", "hostPath": "/b"}])) == "0.5.0"
    assert minimum_version({**base, "devices": [{"name": "0a", "containerEdits": {}}]}) == "0.5.0"
    assert minimum_version({**base, "annotations": {"a": "b"}}) == "0.6.0"
    assert minimum_version({**base, "kind": "qaic.qualcomm.com/claim.v2"}) == "0.6.0"
    assert minimum_version(spec(additionalGids=[995])) == "0.7.0"
    assert minimum_version({**base, "containerEdits": {"intelRdt": {}}}) == "0.7.0"
    assert minimum_version(spec(netDevices=[{"hostInterfaceName": "a", "name": "b"}])) == "1.1.0"
