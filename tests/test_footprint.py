"""Issue 11's behaviour changes: the cheap safety rescan (fingerprint + RescanGate), the
adaptive qaic-util period, and optional modules imported only when their setting is on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from qaic_device_plugin.qaic.discovery import discover
from qaic_device_plugin.qaic.fingerprint import RescanGate, fingerprint
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic_util_poll import QaicUtilPolling
from qaic_device_plugin.settings import Settings
from qaic_device_plugin.sim.node import FakeNode


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


_PROBE = """
import asyncio, json, sys
from qaic_device_plugin.app import App
from qaic_device_plugin.settings_load import load

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
