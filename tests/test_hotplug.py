"""Hot-plug through the real console script and the kubelet simulator: SoCs that appear after
start (driver loaded late, a node with no accelerators at all, a card added, a rebind after a
reset) are offered; a SKU seen for the first time gets its resource; SoCs that leave are
dropped. The periodic resync is an hour away in most tests: inotify on /dev/accel (and its
creation) must carry the change."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from asyncinotify import Inotify, Mask

from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import CardSpec, FakeNode
from qaic_device_plugin.sim.process import PluginProcess

QAIC = "qualcomm.com/qaic"
ULTRA, STD, PRO = "qualcomm.com/qaic-ultra", "qualcomm.com/qaic-std", "qualcomm.com/qaic-pro"
SLOW_RESYNC = {"QAIC_RESYNC_SECONDS": "3600", "QAIC_HEALTH_POLL_SECONDS": "3600"}

StartPlugin = Callable[..., Awaitable[PluginProcess]]
LOOPS_UP = ("udev_unavailable", "udev_started", "udev_off")  # logged after the first scan


async def wait_logged(plugin: PluginProcess, events: tuple[str, ...], timeout: float = 10) -> None:
    """Await a JSON log event by watching the log file (no polling)."""
    with Inotify() as inotify:
        inotify.add_watch(plugin.log_path, Mask.MODIFY)
        async with asyncio.timeout(timeout):
            while not any(plugin.events(e) for e in events):
                await inotify.get()


def fresh(tmp_path: Path, cards: list[CardSpec], name: str = "node") -> FakeNode:
    node = FakeNode(tmp_path / name, cards, foreign_accel=False)
    node.write()
    return node


async def test_driver_loaded_after_the_plugin(
    tmp_path: Path, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    """FACTS 5.6: a plugin started before the driver must not advertise 0 devices forever."""
    node = fresh(tmp_path, [CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD, numa_node=1)])
    node.unload_driver()
    assert not (node.sysfs_root / "class/accel").exists()
    assert not (node.dev_root / "accel").exists()
    plugin = await start_plugin(node, **SLOW_RESYNC)
    await wait_logged(plugin, LOOPS_UP)
    assert kubelet.registrations == []  # nothing to offer yet
    node.load_driver()
    view = await kubelet.wait_devices(QAIC, healthy=5, timeout=5)
    assert set(view.healthy) == {s.pci_address for s in node.socs}
    assert len(plugin.events("soc_found")) == 5


async def test_node_with_no_accelerators_then_a_card(
    tmp_path: Path, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    node = fresh(tmp_path, [])
    (node.dev_root / "accel").rmdir()
    (node.sysfs_root / "class/accel").rmdir()
    plugin = await start_plugin(node, QAIC_SKU_BASED_RESOURCE_ENABLED="true", **SLOW_RESYNC)
    await wait_logged(plugin, LOOPS_UP)
    assert kubelet.registrations == []
    new = node.add_card(CardSpec(Sku.ULTRA))
    view = await kubelet.wait_devices(ULTRA, healthy=4, timeout=5)
    assert set(view.healthy) == {s.pci_address for s in new}
    assert [r.resource for r in kubelet.registrations] == [ULTRA]
    assert plugin.returncode is None


async def test_new_sku_registers_its_resource_and_is_never_offered_as_a_guess(
    tmp_path: Path, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    node = fresh(tmp_path, [CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD, numa_node=1)])
    await start_plugin(node, QAIC_SKU_BASED_RESOURCE_ENABLED="1", **SLOW_RESYNC)
    await kubelet.wait_devices(ULTRA, healthy=4)
    await kubelet.wait_devices(STD, healthy=1)
    std_seen: set[str] = set()

    def record(k: KubeletSim) -> bool:
        if STD in k.resources:
            std_seen.update(k.resources[STD].health)
        return PRO in k.resources and len(k.resources[PRO].healthy) == 1

    (pro,) = node.add_card(CardSpec(Sku.PRO, numa_node=1))  # topology alone would say Std
    await kubelet.wait_for(record, timeout=5)
    assert kubelet.resources[PRO].healthy == [pro.pci_address]
    assert pro.pci_address not in std_seen
    assert [r.resource for r in kubelet.registrations].count(PRO) == 1


async def test_removed_socs_are_dropped_and_an_empty_resource_goes(
    tmp_path: Path, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    node = fresh(tmp_path, [CardSpec(Sku.ULTRA), CardSpec(Sku.PRO, numa_node=1)])
    plugin = await start_plugin(node, QAIC_SKU_BASED_RESOURCE_ENABLED="1", **SLOW_RESYNC)
    await kubelet.wait_devices(ULTRA, healthy=4)
    await kubelet.wait_devices(PRO, healthy=1)
    ultra = [s for s in node.socs if s.sku is Sku.ULTRA]
    node.remove_soc(ultra[0].pci_address)
    view = await kubelet.wait_devices(ULTRA, healthy=3, unhealthy=0, timeout=5)
    assert ultra[0].pci_address not in view.health  # dropped, not kept as Unhealthy
    (pro,) = [s for s in node.socs if s.sku is Sku.PRO]
    node.remove_soc(pro.pci_address)
    # the resource's last SoC left: its server stops, kubelet sees the stream end
    await kubelet.wait_for(lambda k: not k.resources[PRO].connected, timeout=5)
    assert [e["pci"] for e in plugin.events("soc_removed")] == [
        ultra[0].pci_address,
        pro.pci_address,
    ]
    node.add_card(CardSpec(Sku.PRO))  # and a Pro card comes back: registered again
    await kubelet.wait_devices(PRO, healthy=1, timeout=5)
    await kubelet.wait_registered(PRO, count=2)


async def test_reset_that_rebinds_comes_back_with_its_new_node(
    tmp_path: Path, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    """A card reset on older kernels: unbind (accel entry and node gone, PCI function stays)
    then a fresh probe with the lowest free accel number. The SoC stays listed Unhealthy in
    between, then is offered again and Allocate hands out the new node."""
    node = fresh(tmp_path, [CardSpec(Sku.ULTRA)])
    await start_plugin(node, **SLOW_RESYNC)
    await kubelet.wait_devices(QAIC, healthy=4)
    soc = node.socs[1]
    other = node.socs[2]
    node.unbind_driver(soc.pci_address)
    node.unbind_driver(other.pci_address)
    view = await kubelet.wait_devices(QAIC, healthy=2, unhealthy=2, timeout=5)
    assert view.unhealthy == sorted([soc.pci_address, other.pci_address])
    node.bind_driver(other.pci_address)  # takes the lowest free number: soc's old one
    node.bind_driver(soc.pci_address)
    await kubelet.wait_devices(QAIC, healthy=4, timeout=5)
    new_accel = node.soc(soc.pci_address).accel_index
    resp = await kubelet.allocate(QAIC, [soc.pci_address])
    (spec,) = resp.container_responses[0].devices
    assert spec.host_path == f"/dev/accel/accel{new_accel}"


def test_fake_driver_unbind_bind_unload_load_stay_kernel_shaped(tmp_path: Path) -> None:
    from qaic_device_plugin.qaic.discovery import discover

    node = fresh(tmp_path, [CardSpec(Sku.ULTRA), CardSpec(Sku.PRO, numa_node=1)])

    def consistent() -> None:
        for d, _dirs, files in os.walk(node.root):
            for n in _dirs + files:
                p = Path(d, n)
                if p.is_symlink():
                    assert p.resolve().exists(), f"dangling {p}"
        d = discover(node.sysfs_root)
        assert d.skipped == ()
        bound = [s for s in node.socs if s.accel_index >= 0]
        assert [(s.pci_address, s.accel_index, s.qid) for s in d.socs] == [
            (s.pci_address, s.accel_index, s.qid) for s in bound
        ]

    pci = node.socs[2].pci_address
    node.unbind_driver(pci)
    assert not (node.function_dir(pci) / "driver").exists()
    assert "DRIVER=" not in (node.function_dir(pci) / "uevent").read_text()
    consistent()
    node.bind_driver(pci)
    assert (node.function_dir(pci) / "uevent").read_text().startswith("DRIVER=qaic\n")
    consistent()
    node.unload_driver()
    assert not (node.sysfs_root / "bus/pci/drivers/qaic").exists()
    consistent()
    node.load_driver()
    assert len(discover(node.sysfs_root).socs) == 5
    consistent()
