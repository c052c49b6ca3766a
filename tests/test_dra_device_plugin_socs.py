"""The move from device-plugin mode to DRA mode on one node (dra/device_plugin_socs.py over
kubelet/device_plugin_use.py): the DRA driver asks kubelet's PodResources API, the real gRPC
over a Unix socket served by the simulator, which SoCs the device-plugin mode still holds or
serves, and leaves them (and every card or part containing them) out of what it publishes
until they are released. The same on the real cluster: tests/e2e/test_migration.py."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qaic_device_plugin.dra import cards
from qaic_device_plugin.dra.backend import QaicDraDriver, device_name
from qaic_device_plugin.dra.device_plugin_socs import DevicePluginSocs
from qaic_device_plugin.kubelet.device_plugin_use import device_plugin_use
from qaic_device_plugin.kubelet.podresources import (
    ContainerDevices,
    PodResourcesUnavailable,
    ResourceDevices,
    allocatable_devices,
)
from qaic_device_plugin.qaic.inventory import Inventory, SocState
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.qaic.qaic_util import parse_qaic_util
from qaic_device_plugin.qaic.resources import is_ours
from qaic_device_plugin.sim.node import CardSpec, FakeNode
from qaic_device_plugin.sim.podresources import PodResourcesSim

QAIC = "qualcomm.com/qaic"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="qaic-mig-"))  # short: Unix socket paths are limited
    yield d
    shutil.rmtree(d, ignore_errors=True)


def scan(root: Path, specs: list[CardSpec]) -> list[SocState]:
    """The node's SoCs as the driver scans them (qaic-util names the SKUs: cards proven)."""
    node = FakeNode(root / "node", specs)
    node.write()
    out = subprocess.run([str(node.qaic_util_path), "-q"], capture_output=True, text=True,
                         check=True).stdout
    return list(Inventory(node.sysfs_root, node.dev_root, {}).scan(parse_qaic_util(out)).socs)


def pod(name: str, *ids: str, resource: str = QAIC) -> ContainerDevices:
    return ContainerDevices("ml", name, "main", resource, tuple(ids))


def served(*ids: str, resource: str = QAIC) -> ResourceDevices:
    return ResourceDevices(resource, tuple(ids))


async def test_allocatable_is_what_device_plugins_serve(sock_dir: Path) -> None:
    async with PodResourcesSim(sock_dir / "kubelet.sock") as sim:
        sim.set_allocatable([served("0000:35:00.0", "0000:36:00.0"),
                             served("eth1", resource="example.com/nic")])
        got = await allocatable_devices(sim.socket, timeout=2)
    assert got == [served("0000:35:00.0", "0000:36:00.0"),
                   served("eth1", resource="example.com/nic")]


async def test_device_plugin_use_keeps_only_the_names_asked_for(sock_dir: Path) -> None:
    async with PodResourcesSim(sock_dir / "kubelet.sock") as sim:
        sim.set_held([pod("a", "0000:35:00.0"), pod("b", "eth1", resource="example.com/nic"),
                      pod("c", "0000:90:00.0::1", resource="qualcomm.com/qaic-pro")])
        sim.set_allocatable([served("eth1", resource="example.com/nic")])
        use = await device_plugin_use(sim.socket, is_ours, timeout=2)
    assert [c.pod for c in use.held] == ["a", "c"]
    assert use.offered == () and not use.idle


async def test_held_socs_are_withheld_until_released(
        sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The operator's `pulumi up` to DRA mode: the SoCs running pods hold (a shared SoC's
    replica ID counts as its SoC) are withheld, the old device plugin's free ones are not
    (the update would deadlock on the new mode's samples). While the device plugin serves,
    kubelet is asked again, so a SoC it gives a new pod is withdrawn; once it has stopped
    and the pods have ended, nothing is withheld and kubelet is not asked again."""
    caplog.set_level(logging.INFO)
    a, b, c = "0000:35:00.0", "0000:36:00.0", "0000:90:00.0"
    ultra = "qualcomm.com/qaic-ultra"
    async with PodResourcesSim(sock_dir / "kubelet.sock") as sim:
        sim.set_held([pod("train", a, f"{b}::1", resource=ultra)])
        sim.set_allocatable([served(a, f"{b}::0", f"{b}::1", c, resource=ultra)])
        socs = DevicePluginSocs(sim.socket, poll_seconds=0.05)
        assert await socs.poll()
        assert set(socs.withheld) == {a, b} and socs.served == 3 and not socs.done
        assert "held by ml/train (main) under qualcomm.com/qaic-ultra" in socs.withheld[a]

        changes: asyncio.Queue[frozenset[str]] = asyncio.Queue()
        follow = asyncio.create_task(
            socs.follow(lambda: changes.put_nowait(frozenset(socs.withheld))))
        # a new pod admitted through the device plugin while it still serves
        sim.set_held([*sim.held, pod("late", c)])
        async with asyncio.timeout(5):
            assert await changes.get() == {a, b, c}
        sim.set_allocatable([])  # the device plugin's pod is gone: still held, still asked
        sim.set_held([pod("train", a, f"{b}::1", resource=ultra)])
        async with asyncio.timeout(5):
            assert await changes.get() == {a, b}
        sim.set_held([])  # the pod is deleted
        async with asyncio.timeout(5):
            assert await changes.get() == frozenset()
        assert socs.done and changes.empty()
        calls = sim.calls
        await asyncio.sleep(0.3)  # six poll periods: nobody asks any more
        assert sim.calls == calls and not follow.done()
        follow.cancel()
    released = [r for r in caplog.records if getattr(r, "event", "") == "soc_released"]
    assert sorted(getattr(r, "pci", "") for r in released) == [a, b, c]


async def test_no_socket_publishes_everything_said_once_and_is_asked_again(
        sock_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A DaemonSet without the pod-resources mount, or kubelet restarting: DRA mode is not
    blocked (nothing withheld, one warning); when kubelet answers again, a holding it
    reports is withheld from then on."""
    path = sock_dir / "kubelet.sock"
    socs = DevicePluginSocs(path, poll_seconds=0.05)
    assert not await socs.poll() and socs.withheld == {} and socs.unavailable
    assert not await socs.poll() and not socs.done
    warned = [r for r in caplog.records if getattr(r, "event", "") == "pod_resources_unavailable"]
    assert len(warned) == 1
    async with PodResourcesSim(path) as sim:
        sim.set_held([pod("old", "0000:35:00.0")])
        assert await socs.poll()
    assert set(socs.withheld) == {"0000:35:00.0"} and not socs.unavailable


async def test_a_kubelet_that_never_answers_does_not_hold_up_the_driver(sock_dir: Path) -> None:
    path = sock_dir / "hung.sock"
    server = await asyncio.start_unix_server(lambda r, w: None, path=str(path))
    try:
        socs = DevicePluginSocs(path, timeout=0.3)
        async with asyncio.timeout(3):
            await socs.poll()
        assert socs.unavailable and socs.withheld == {}
        with pytest.raises(PodResourcesUnavailable):
            await device_plugin_use(path, is_ours, timeout=0.3)
    finally:
        server.close()


async def test_a_held_ultra_soc_takes_its_card_parts_and_counters_out(
        sock_dir: Path, tmp_path: Path) -> None:
    """What the slices offer while one SoC of an Ultra card is held by a device-plugin pod:
    not that SoC, not its card or any part containing it, no counter set for that card (the
    card is incomplete); its three other SoCs alone, the other card whole. On release, all
    of it again."""
    states = scan(tmp_path, [CardSpec(Sku.ULTRA), CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD)])
    ultra = sorted((s for s in states if s.sku.sku is Sku.ULTRA),
                   key=lambda s: s.soc.pci_address)
    held = ultra[0].soc
    driver = QaicDraDriver("node-1", tmp_path / "cdi", partitions=True)
    async with PodResourcesSim(sock_dir / "kubelet.sock") as sim:
        sim.set_held([pod("dp-job", held.pci_address)])
        socs = DevicePluginSocs(sim.socket)
        await socs.poll()
        names = {d.name for d in driver.update(socs.offerable(states))}
        assert device_name(held.pci_address) not in names
        assert len(names) == len(states) - 1 + 11  # the other card: whole + 10 parts
        assert not any(n.startswith(cards.card_device_name(held.card_id)) for n in names)
        assert [c["name"] for c in driver.counter_sets] == [
            cards.card_device_name(ultra[4].soc.card_id)]
        mates = [device_name(s.soc.pci_address) for s in ultra[1:4]]
        assert set(mates) <= names
        sim.set_held([])
        assert await socs.poll()
        names = {d.name for d in driver.update(socs.offerable(states))}
    assert len(names) == len(states) + 2 * 11 and len(driver.counter_sets) == 2
