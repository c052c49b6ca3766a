"""Issue 20: shared SoCs in DRA mode, and hardware (not device names) as the unit of "one claim
only", with the real qaic driver (dra/backend.py), checkpoint and node service over real gRPC
and Unix sockets to the kubelet stand-in, on a fake node written like the kernel's sysfs.

- with ALLOWED_QAIC_DEVICE_SHARES = N each SoC is published with allowMultipleAllocations
  and the consumable capacity qaic.qualcomm.com/shares = N (one a claim by default), and no
  whole-card or part devices; claims allocated shares of one SoC (each with a shareID) are
  all prepared, each with a CDI spec of its own naming the same device node and QID, and
  unpreparing one leaves the others' specs as they were;
- a claim for a whole card and a claim for one of its SoCs are different devices on the same
  SoC: the second prepare is refused, naming the SoC and the other claim;
- the monitoring view (QAIC_DRA_MONITOR_DEVICE): one device `all-socs` with every SoC,
  prepared for adminAccess only, also while a SoC is unhealthy, beside claims on its SoCs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_dra_prepare import Claims, node_of_device, on, prepare, qaic_util, spec_of

from qaic_device_plugin.dra.backend import (
    DRIVER_NAME,
    MONITOR_DEVICE,
    QaicDraDriver,
    cdi_spec_path,
    device_name,
)
from qaic_device_plugin.dra.cards import card_device_name
from qaic_device_plugin.kubelet.dra.checkpoint import Checkpoint
from qaic_device_plugin.kubelet.dra.node import NodeService
from qaic_device_plugin.kubelet.dra.plugin import DraPlugin
from qaic_device_plugin.kubelet.dra.types import AllocatedDevice, ClaimRef
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.sim.dra_kubelet import DraKubeletSim
from qaic_device_plugin.sim.node import FakeNode

NODE = "node-1"
SHARE = [f"0a1b2c3d-0000-4000-8000-00000000000{i}" for i in range(4)]


@pytest.fixture
async def kubelet(dirs: Path) -> AsyncIterator[DraKubeletSim]:
    async with DraKubeletSim(dirs / "registry") as sim:
        yield sim


class Harness:
    """One driver process's DRA side with the app's options (cards on, the share count)."""

    def __init__(self, node: FakeNode, dirs: Path, options: dict[str, Any]) -> None:
        self.node = node
        self.claims = Claims()
        self.cdi_dir = dirs / "cdi"
        self.backend = QaicDraDriver(NODE, self.cdi_dir, partitions=True, **options)
        self.rescan()
        checkpoint = Checkpoint(dirs / "plugins" / DRIVER_NAME / "checkpoint.json")
        self.plugin = DraPlugin(
            DRIVER_NAME, NodeService(self.backend, self.claims, checkpoint),
            plugins_dir=dirs / "plugins", registry_dir=dirs / "registry", resync_seconds=30.0)

    def rescan(self) -> None:
        """What the app does on every inventory change."""
        state = Inventory(self.node.sysfs_root, self.node.dev_root, {}).scan(
            qaic_util(self.node))
        self.devices = {d.name: d.to_dict() for d in self.backend.update(state.socs)}


@pytest.fixture
async def harness(request: pytest.FixtureRequest, node: FakeNode, dirs: Path,
                  kubelet: DraKubeletSim) -> AsyncIterator[Harness]:
    h = Harness(node, dirs, getattr(request, "param", {}))
    await h.plugin.start()
    await kubelet.wait_registered(DRIVER_NAME)
    yield h
    await h.plugin.close()


@pytest.mark.parametrize("harness", [{"shares": 3}], indirect=True)
async def test_shared_socs_are_published_with_capacity_and_prepared_per_claim(
    node: FakeNode, harness: Harness, kubelet: DraKubeletSim,
) -> None:
    soc = node.socs[0]
    name = device_name(soc.pci_address)
    device = harness.devices[name]
    assert device["allowMultipleAllocations"] is True
    assert device["capacity"] == {"shares": {"value": "3", "requestPolicy": {
        "default": "1", "validRange": {"min": "1", "step": "1"}}}}
    # Shares and whole cards do not mix: only SoC devices, none consuming counters.
    assert set(harness.devices) == {device_name(s.pci_address) for s in node.socs}
    assert harness.backend.counter_sets == []
    assert not any(d.get("consumesCounters") for d in harness.devices.values())

    refs = [harness.claims.allocate(ClaimRef("ns", f"{i}-uid", f"share-{i}"),
                                    on(soc, share_id=SHARE[i])) for i in range(3)]
    for ref in refs:
        got = await prepare(kubelet, ref)
        assert got.error == "", got.error
        assert [d.share_id for d in got.devices] == [SHARE[int(ref.name[-1])]]
    accel = f"/dev/accel/accel{soc.accel_index}"
    for ref in refs:  # every sharer sees the same SoC: its node and its QID
        spec = spec_of(harness, ref.uid)
        assert node_of_device(spec, ref.uid) == {name: accel}
        assert spec["containerEdits"]["env"] == [f"QAIC_VISIBLE_DEVICES={soc.qid}"]
    before = [cdi_spec_path(harness.cdi_dir, r.uid).read_text() for r in refs[1:]]
    assert (await kubelet.unprepare(DRIVER_NAME, [refs[0]])).claims[refs[0].uid].error == ""
    assert not cdi_spec_path(harness.cdi_dir, refs[0].uid).exists()
    assert [cdi_spec_path(harness.cdi_dir, r.uid).read_text() for r in refs[1:]] == before


@pytest.mark.parametrize("harness", [{"shares": 2}], indirect=True)
async def test_two_shares_of_one_soc_in_one_claim_are_one_cdi_device(
    node: FakeNode, harness: Harness, kubelet: DraKubeletSim,
) -> None:
    """A claim asking for two devices of a shared class may get two shares of one SoC (the
    scheduler allows it; distinctAttribute prevents it). The spec must still be valid CDI:
    one device per name."""
    soc = node.socs[0]
    ref = harness.claims.allocate(ClaimRef("ns", "d-uid", "double"),
                                  on(soc, share_id=SHARE[0]), on(soc, share_id=SHARE[1]))
    got = await prepare(kubelet, ref)
    assert got.error == ""
    assert sorted(d.share_id for d in got.devices) == SHARE[:2]
    spec = spec_of(harness, ref.uid)
    assert [d["name"] for d in spec["devices"]] == [f"{ref.uid}-{device_name(soc.pci_address)}"]


async def test_a_card_claim_and_a_claim_for_one_of_its_socs_never_both_prepare(
    node: FakeNode, harness: Harness, kubelet: DraKubeletSim,
) -> None:
    """Last line of defence, on hardware: a whole card and one of its SoCs are two devices
    (the counters keep the scheduler from allocating both); if it happened anyway (a stale
    checkpoint entry), the second prepare is refused, naming the SoC. Before, the guard
    compared device names and prepared both: two pods on one SoC."""
    card = [s for s in node.socs if s.card_id == node.socs[0].card_id]
    card_device = card_device_name(card[0].card_id)
    assert card_device in harness.devices
    soc_claim = harness.claims.allocate(ClaimRef("ns", "s-uid", "one-soc"), on(card[2]))
    card_claim = harness.claims.allocate(
        ClaimRef("ns", "c-uid", "whole-card"), AllocatedDevice("socs", NODE, card_device))
    monitor = harness.claims.allocate(
        ClaimRef("mon", "m-uid", "monitor"),
        AllocatedDevice("socs", NODE, card_device, admin_access=True))
    assert (await prepare(kubelet, soc_claim)).error == ""
    refused = (await prepare(kubelet, card_claim)).error
    assert refused == (
        f"prepare ns/whole-card: device {NODE}/{card_device} uses "
        f"{device_name(card[2].pci_address)}, which is already prepared for claim ns/one-soc "
        f"(UID s-uid) (in its device {NODE}/{device_name(card[2].pci_address)}); it cannot be "
        "given to claim ns/whole-card as well. Both were allocated the same hardware: "
        "unprepare or delete the pod of one of them")
    assert not cdi_spec_path(harness.cdi_dir, card_claim.uid).exists()
    assert (await prepare(kubelet, monitor)).error == ""  # adminAccess coexists
    await kubelet.unprepare(DRIVER_NAME, [soc_claim])
    assert (await prepare(kubelet, card_claim)).error == ""


@pytest.mark.parametrize("harness", [{"monitor_device": True}], indirect=True)
async def test_the_monitoring_view_is_every_soc_for_admin_access_only(
    node: FakeNode, harness: Harness, kubelet: DraKubeletSim,
) -> None:
    device = harness.devices[MONITOR_DEVICE]
    assert device["attributes"] == {"type": {"string": "all"},
                                    "socCount": {"int": len(node.socs)}}
    assert not device.get("consumesCounters") and not device.get("taints")
    soc = node.socs[0]
    user = harness.claims.allocate(ClaimRef("ns", "u-uid", "user"), on(soc))
    assert (await prepare(kubelet, user)).error == ""
    node.remove_device_node(node.socs[1].pci_address)  # a SoC goes bad
    harness.rescan()
    assert not harness.devices[MONITOR_DEVICE].get("taints")
    monitor = harness.claims.allocate(
        ClaimRef("mon", "m-uid", "monitor"),
        AllocatedDevice("socs", NODE, MONITOR_DEVICE, admin_access=True))
    assert (await prepare(kubelet, monitor)).error == ""  # beside the user, bad SoC and all
    spec = spec_of(harness, monitor.uid)
    [cdi] = spec["devices"]
    assert sorted(n["path"] for n in cdi["containerEdits"]["deviceNodes"]) == sorted(
        f"/dev/accel/accel{s.accel_index}" for s in node.socs)
    assert spec["containerEdits"]["env"] == [
        "QAIC_VISIBLE_DEVICES=" + ",".join(str(q) for q in sorted(s.qid for s in node.socs))]
    stolen = harness.claims.allocate(ClaimRef("ns", "s-uid", "everything"),
                                     AllocatedDevice("socs", NODE, MONITOR_DEVICE))
    assert "already prepared for claim ns/user" in (await prepare(kubelet, stolen)).error
    await kubelet.unprepare(DRIVER_NAME, [user])
    assert (await prepare(kubelet, stolen)).error == (
        "prepare ns/everything: device all-socs (every SoC of the node) is prepared only for "
        "claims with adminAccess, in a namespace labelled "
        "resource.kubernetes.io/admin-access=true; claim SoCs of another class")


def test_a_bad_monitor_device_setting_is_one_line_exit_2() -> None:
    import subprocess

    from qaic_device_plugin.sim.process import plugin_command

    out = subprocess.run(plugin_command(), env={
        "QAIC_ALLOCATION_API": "dra", "NODE_NAME": NODE, "QAIC_DRA_MONITOR_DEVICE": "maybe",
        "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "qaic-device-plugin: invalid setting QAIC_DRA_MONITOR_DEVICE='maybe': accepted: true or "
        "false (publish the device all-socs: every SoC, for adminAccess claims)"]
