"""The real console script, driven only by environment variables, against the kubelet simulator
on a driver-accurate fake node: registration, listing, allocation, health, restarts, signals."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from asyncinotify import Inotify, Mask
from grpc import aio

from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.qaic.discovery import discover
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]

QAIC = "qualcomm.com/qaic"
ULTRA, STD, PRO = "qualcomm.com/qaic-ultra", "qualcomm.com/qaic-std", "qualcomm.com/qaic-pro"


async def test_sku_mode_off_offers_one_pool(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, sockets: Callable[[], list[str]]
) -> None:
    plugin = await start_plugin()
    view = await kubelet.wait_devices(QAIC, healthy=10)
    assert set(view.healthy) == {s.pci_address for s in node.socs}
    assert [r.resource for r in kubelet.registrations] == [QAIC]
    assert sockets() == ["kubelet.sock", "qualcomm.com_qaic.sock"]
    # every device carries its NUMA node
    assert {view.numa[s.pci_address] for s in node.socs if s.numa_node == 1} == {(1,)}
    assert view.options.get_preferred_allocation_available
    assert plugin.events("registered")[0]["resource"] == QAIC


@pytest.mark.parametrize("qaic_util", [True, False], ids=["qaic-util", "topology"])
async def test_sku_mode_on_offers_one_resource_per_sku(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, qaic_util: bool
) -> None:
    plugin = await start_plugin(qaic_util=qaic_util, QAIC_SKU_BASED_RESOURCE_ENABLED="yes")
    if qaic_util:
        ultra = await kubelet.wait_devices(ULTRA, healthy=8)
        assert set(ultra.healthy) == {s.pci_address for s in node.socs if s.sku.value == "ultra"}
        await kubelet.wait_devices(STD, healthy=1)
        await kubelet.wait_devices(PRO, healthy=1)
        sources = {e["source"] for e in plugin.events("sku")}
        assert sources == {"qaic-util"}
    else:
        # Without qaic-util every SoC is a Standard guess: a Pro card and an on-card switch
        # cannot be told from a Standard card and a server-board switch (issue 13).
        await kubelet.wait_devices(STD, healthy=10)
        assert ULTRA not in kubelet.resources and PRO not in kubelet.resources
        assert {e["source"] for e in plugin.events("sku")} == {"topology"}


async def test_sku_override_maps_a_lone_soc(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    pro = next(s for s in node.socs if s.sku.value == "pro")
    await start_plugin(
        qaic_util=False,
        QAIC_SKU_BASED_RESOURCE_ENABLED="1",
        QAIC_SKU_OVERRIDES=f'{{"{pro.pci_address}": "pro"}}',
    )
    view = await kubelet.wait_devices(PRO, healthy=1)
    assert view.healthy == [pro.pci_address]
    await kubelet.wait_devices(STD, healthy=9)


async def test_allocate_returns_device_specs_and_qids(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin()
    await kubelet.wait_devices(QAIC, healthy=10)
    # Pick SoCs whose accel number differs from their QID (the fake node guarantees some).
    socs = [s for s in node.socs if s.accel_index != s.qid][:2]
    assert len(socs) == 2
    resp = await kubelet.allocate(QAIC, [s.pci_address for s in socs], [socs[0].pci_address])
    first, second = resp.container_responses
    assert sorted((d.container_path, d.host_path, d.permissions) for d in first.devices) == sorted(
        (f"/dev/accel/accel{s.accel_index}", f"/dev/accel/accel{s.accel_index}", "rw") for s in socs
    )
    assert first.envs["QAIC_VISIBLE_DEVICES"] == ",".join(
        str(q) for q in sorted(s.qid for s in socs)
    )
    assert second.envs["QAIC_VISIBLE_DEVICES"] == str(socs[0].qid)
    assert len(second.devices) == 1
    # The log line follows the reply on the plugin's next loop turn: any later call is
    # answered after it is written.
    await kubelet.view(QAIC).stub.GetDevicePluginOptions(pb.Empty(), timeout=10)
    logged = plugin.events("allocate")
    assert logged and logged[0]["QAIC_VISIBLE_DEVICES"] == first.envs["QAIC_VISIBLE_DEVICES"]


async def test_allocate_refuses_unknown_and_unhealthy_whole(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    await kubelet.wait_devices(QAIC, healthy=10)
    good, bad = node.socs[0].pci_address, node.socs[1].pci_address
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate(QAIC, [good, "0000:99:00.0"])
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "0000:99:00.0" in (err.value.details() or "")
    node.remove_device_node(bad)
    await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1)
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate(QAIC, [good], [bad])  # one bad container fails the whole call
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "unhealthy" in (err.value.details() or "")


async def test_device_node_removal_flips_health_and_recovers(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin(QAIC_RESYNC_SECONDS="3600")  # inotify alone must do it
    await kubelet.wait_devices(QAIC, healthy=10)
    soc = node.socs[3]
    node.remove_device_node(soc.pci_address)
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    assert view.unhealthy == [soc.pci_address]
    node.restore_device_node(soc.pci_address)
    await kubelet.wait_devices(QAIC, healthy=10, timeout=5)
    flips = [e for e in plugin.events("health") if e["pci"] == soc.pci_address]
    assert [e["healthy"] for e in flips] == [True, False, True]


async def test_reset_that_removes_the_accel_entry_keeps_the_soc_unhealthy(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    await kubelet.wait_devices(QAIC, healthy=10)
    soc = node.socs[0]
    accel = node.sysfs_root / "class" / "accel" / f"accel{soc.accel_index}"
    target = accel.readlink()
    accel.unlink()  # old kernels: a reset removes and re-creates the accel node
    node.remove_device_node(soc.pci_address)
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1)
    assert view.unhealthy == [soc.pci_address]  # still listed: kubelet keeps counting it
    accel.symlink_to(target)
    node.restore_device_node(soc.pci_address)
    await kubelet.wait_devices(QAIC, healthy=10)


async def test_kubelet_restart_reregisters_every_resource(
    kubelet: KubeletSim, start_plugin: StartPlugin, sockets: Callable[[], list[str]]
) -> None:
    plugin = await start_plugin(QAIC_SKU_BASED_RESOURCE_ENABLED="true")
    for r, n in ((ULTRA, 8), (STD, 1), (PRO, 1)):
        await kubelet.wait_devices(r, healthy=n)
    for restart in range(1, 4):
        await kubelet.restart()  # how fast it comes back is measured in bench/, not here
        for r in (ULTRA, STD, PRO):
            await kubelet.wait_registered(r, count=1 + restart, timeout=5)
        await kubelet.wait_devices(ULTRA, healthy=8)
    assert sockets() == sorted(
        [
            "kubelet.sock",
            "qualcomm.com_qaic-pro.sock",
            "qualcomm.com_qaic-std.sock",
            "qualcomm.com_qaic-ultra.sock",
        ]
    )
    assert len(await plugin.wait_events("reregistered", 9)) == 9


async def test_waits_for_kubelet_then_registers(
    plugin_dir: Path, start_plugin: StartPlugin
) -> None:
    sock = plugin_dir / "qualcomm.com_qaic.sock"
    with Inotify() as inotify:
        inotify.add_watch(plugin_dir, Mask.CREATE)
        plugin = await start_plugin()
        async with asyncio.timeout(10):
            async for event in inotify:
                if event.name is not None and event.name.name == sock.name:
                    break
    assert sock.is_socket()  # serving before registering, kubelet or not
    assert not (plugin_dir / "kubelet.sock").exists()
    async with KubeletSim(plugin_dir) as sim:
        await sim.wait_devices(QAIC, healthy=10)
        assert len(sim.registrations) == 1
    assert plugin.events("kubelet_absent")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_cleanly_and_removes_sockets(
    kubelet: KubeletSim, start_plugin: StartPlugin, sockets: Callable[[], list[str]], sig: int
) -> None:
    plugin = await start_plugin(QAIC_SKU_BASED_RESOURCE_ENABLED="1")
    await kubelet.wait_devices(ULTRA, healthy=8)
    assert len(sockets()) == 4
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await plugin.stop(sig, timeout=2.0) == 0
    assert loop.time() - t0 < 2.0
    assert sockets() == ["kubelet.sock"]
    # kubelet sees the streams end and marks the devices unhealthy
    await kubelet.wait_devices(ULTRA, healthy=0, unhealthy=8)


async def test_foreign_accel_device_is_never_offered(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    view = await kubelet.wait_devices(QAIC, healthy=10)
    assert node.foreign_pci is not None
    assert node.foreign_pci not in view.health
    assert discover(node.sysfs_root).foreign == ("accel0",)
