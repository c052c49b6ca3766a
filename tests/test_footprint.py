"""Issue 11's behaviour changes: the cheap safety rescan (fingerprint + RescanGate), the
adaptive qaic-util period, and optional modules imported only when their setting is on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from qaic_device_plugin.config.settings import Settings
from qaic_device_plugin.core.fswatch import WatchStatus, watch_directory
from qaic_device_plugin.qaic.discovery import discover
from qaic_device_plugin.qaic.fingerprint import RescanGate, fingerprint
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.scan.qaic_util_poll import QaicUtilPolling
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

QAIC = "qualcomm.com/qaic"

StartPlugin = Callable[..., Awaitable[PluginProcess]]


def _fp(node: FakeNode) -> tuple[object, ...]:
    socs = discover(node.sysfs_root).socs
    return fingerprint(node.sysfs_root, node.dev_root, socs)


def test_fingerprint_is_stable_and_sees_what_a_scan_would(node: FakeNode) -> None:
    base = _fp(node)
    assert _fp(node) == base  # nothing changed: no full scan needed
    soc = node.socs[1]
    node.remove_device_node(soc.pci_address)
    assert _fp(node) != base
    node.restore_device_node(soc.pci_address)
    node.bump_ue_count(soc.pci_address)  # sysfs keeps an attribute's mtime: content is read
    changed = _fp(node)
    assert changed != base
    link = node.sysfs_root / "class" / "accel" / f"accel{soc.accel_index}"
    target = link.readlink()
    link.unlink()  # the sysfs-only reset signal: no inotify, no uevent
    assert fingerprint(node.sysfs_root, node.dev_root, discover(node.sysfs_root).socs) != changed
    link.symlink_to(target)
    node.unbind_driver(node.socs[2].pci_address)
    assert _fp(node) != changed


def test_rescan_gate_full_scan_on_change_or_after_its_period(node: FakeNode) -> None:
    now = [100.0]
    gate = RescanGate(node.sysfs_root, node.dev_root, 60.0, lambda: now[0])
    socs = discover(node.sysfs_root).socs
    assert gate.due(socs)  # never scanned
    gate.scanned(gate.scanning(socs), same_socs=True)
    now[0] += 59
    assert not gate.due(socs)
    node.remove_device_node(node.socs[0].pci_address)
    assert gate.due(socs)
    gate.scanned(gate.scanning(socs), same_socs=True)
    assert not gate.due(socs)
    now[0] += 60
    assert gate.due(socs)  # the slow full scan, for what the fingerprint cannot see
    gate.scanned(gate.scanning(socs), same_socs=False)  # SoCs came or went
    now[0] += 1
    assert gate.due(socs)


def _settings(node: FakeNode, plugin_dir: Path) -> Settings:
    return Settings(
        QAIC_SYSFS_ROOT=node.sysfs_root,
        QAIC_DEV_ROOT=node.dev_root,
        QAIC_DEVICE_PLUGIN_DIR=plugin_dir,
        QAIC_UTIL_PATH=str(node.qaic_util_path),
        QAIC_HEALTH_POLL_SECONDS=30,
        QAIC_POD_RESOURCES_SOCKET=node.root / "pod-resources" / "kubelet.sock",
    )


async def test_qaic_util_runs_slowly_only_while_every_soc_is_ready(
    node: FakeNode, plugin_dir: Path
) -> None:
    settings = _settings(node, plugin_dir)
    assert settings.health_poll_idle_period == 120  # default: 4 x QAIC_HEALTH_POLL_SECONDS
    polling = QaicUtilPolling(settings, lambda signal: None)
    inventory = Inventory(node.sysfs_root, node.dev_root, {})
    assert polling.period(None) == 30  # nothing known yet
    assert await polling.poll()
    state = inventory.scan(polling.current())
    assert all(s.healthy for s in state.socs)
    assert polling.period(state) == 120
    assert not await polling.poll()  # the same answer: no refresh (no full scan) is due
    node.set_status(node.socs[3].pci_address, "Initializing")
    assert await polling.poll()  # a changed answer is
    state = inventory.scan(polling.current())
    assert not state.by_pci()[node.socs[3].pci_address].healthy
    assert polling.period(state) == 30  # qaic-util is what says when it is Ready again


def test_explicit_idle_poll_and_full_rescan_settings(node: FakeNode, plugin_dir: Path) -> None:
    s = _settings(node, plugin_dir).model_copy(
        update={"health_poll_idle_seconds": 45.0, "full_rescan_seconds": 20.0}
    )
    assert s.health_poll_idle_period == 45
    assert s.full_rescan_period == 20
    default = _settings(node, plugin_dir)
    assert default.full_rescan_period == 60 * default.resync_seconds == 300
    assert default.resync_events_period == 6 * default.resync_seconds == 30
    assert s.model_copy(update={"resync_events_seconds": 12.0}).resync_events_period == 12


async def test_sysfs_safety_net_slows_only_while_uevents_arrive(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    """With the udev monitor open the fingerprint tick runs at QAIC_RESYNC_EVENTS_SECONDS: a
    change that sends no event waits for one (or that tick). Without uevents the short
    QAIC_RESYNC_SECONDS tick is what finds it."""
    pci = node.socs[2].pci_address
    slow = {"QAIC_RESYNC_SECONDS": "0.1", "QAIC_RESYNC_EVENTS_SECONDS": "3600"}
    plugin = await start_plugin(QAIC_UDEV_SOURCE="kernel", **slow)
    await kubelet.wait_devices(QAIC, healthy=10)
    assert plugin.events("udev_started")
    # short ticks until a scan fingerprinted the SoCs it found, then the events period
    periods = await plugin.wait_events("resync_period", 2)
    assert [e["seconds"] for e in periods] == [0.1, 3600]
    node.bump_ue_count(pci)  # sysfs only: no inotify event, and the fake node sends no uevent
    with pytest.raises(TimeoutError):  # ten short ticks would have found it
        await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=1.0)
    os.utime(node.dev_root / "accel" / f"accel{node.socs[0].accel_index}")  # any event: a scan
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    assert view.unhealthy == [pci]
    await plugin.stop()

    node.bump_ue_count(node.socs[3].pci_address)
    off = await start_plugin(QAIC_UDEV_ENABLED="false", **slow)
    await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=10)  # the restart's view
    assert off.events("udev_off")
    assert [e["seconds"] for e in off.events("resync_period")] == [0.1]
    node.bump_ue_count(node.socs[4].pci_address)
    await kubelet.wait_devices(QAIC, healthy=8, unhealthy=2, timeout=5)  # a short tick


async def test_watch_status_follows_the_directory_watch(tmp_path: Path) -> None:
    """The plugin-dir check slows down only while this says the watch is in place, and
    `lost` wakes it at once when the watch goes (kubelet/manager.py)."""
    d = tmp_path / "plugins"
    d.mkdir()
    status = WatchStatus()
    events = watch_directory(d, status=status)
    first = asyncio.ensure_future(anext(events))
    async with asyncio.timeout(5):
        await status.placed.wait()
    assert status.live and not status.lost.is_set()
    d.rmdir()
    async with asyncio.timeout(5):
        await status.lost.wait()
        await first  # the RESCAN for the vanished directory
    assert not status.live
    second = asyncio.ensure_future(anext(events))
    d.mkdir()
    async with asyncio.timeout(5):
        await status.placed.wait()
        assert status.live and not status.lost.is_set()
        (d / "kubelet.sock").touch()
        await second
    await events.aclose()


_PROBE = """
import asyncio, json, sys
from qaic_device_plugin.deviceplugin.app import App
from qaic_device_plugin.config.load import load

async def main():
    App(load([]))

asyncio.run(main())
print(json.dumps({m: m in sys.modules for m in ("prometheus_client", "yaml", "pyudev")}))
"""


def _imported(env: dict[str, str]) -> dict[str, bool]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("QAIC_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, bool] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_optional_modules_are_imported_only_when_their_setting_is_on(
    node: FakeNode, plugin_dir: Path, tmp_path: Path
) -> None:
    base = {
        "QAIC_SYSFS_ROOT": str(node.sysfs_root),
        "QAIC_DEV_ROOT": str(node.dev_root),
        "QAIC_DEVICE_PLUGIN_DIR": str(plugin_dir),
    }
    off = _imported({**base, "QAIC_METRICS_PORT": "0"})
    assert off == {"prometheus_client": False, "yaml": False, "pyudev": False}
    config = tmp_path / "qaic.yaml"
    config.write_text("QAIC_METRICS_PORT: 9999\n")
    on = _imported({**base, "QAIC_CONFIG_FILE": str(config)})
    assert on["prometheus_client"] and on["yaml"]
