"""The state file: RAS cool-downs and learned SKUs survive a plugin restart (issue 13 item 5);
a corrupt or unreadable file is logged and ignored."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic.model import Sku, SkuDecision, SkuSource
from qaic_device_plugin.qaic.statefile import StateFile, default_state_file
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"
STD, PRO = "qualcomm.com/qaic-std", "qualcomm.com/qaic-pro"
FAST = {"QAIC_RESYNC_SECONDS": "0.2"}


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- in process ---------------------------------------------------------------------------------


def test_cooldown_is_stored_as_wall_clock_and_resumed_on_another_monotonic_clock(
    node: FakeNode, tmp_path: Path
) -> None:
    pci = node.socs[0].pci_address
    mono, wall = Clock(100.0), Clock(1_000_000.0)
    inv = Inventory(node.sysfs_root, node.dev_root, {}, ue_cooldown_seconds=30, clock=mono)
    saved = StateFile(tmp_path / "d" / "state.json", inv, clock=mono, wall_clock=wall)
    inv.scan(None)
    node.bump_ue_count(pci)
    assert not inv.scan(None).by_pci()[pci].healthy
    saved.save()
    data = json.loads(saved.path.read_text())
    assert data["version"] == 1
    assert data["ras_cooldown_until"] == {pci: 1_000_030.0}
    assert [p.name for p in saved.path.parent.iterdir()] == ["state.json"]  # no temp left

    # "reboot": the monotonic clock starts over; 10 s of wall time passed
    mono2, wall2 = Clock(5.0), Clock(1_000_010.0)
    inv2 = Inventory(node.sysfs_root, node.dev_root, {}, ue_cooldown_seconds=30, clock=mono2)
    StateFile(saved.path, inv2, clock=mono2, wall_clock=wall2).restore()
    assert inv2.ras.cooldowns() == {pci: 25.0}
    assert not inv2.scan(None).by_pci()[pci].healthy  # the first reading is only a baseline
    mono2.t = 25.0
    assert inv2.scan(None).by_pci()[pci].healthy


def test_an_expired_cooldown_is_not_restored(node: FakeNode, tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    pci = node.socs[0].pci_address
    path.write_text(json.dumps({"version": 1, "ras_cooldown_until": {pci: 50.0}}))
    inv = Inventory(node.sysfs_root, node.dev_root, {}, clock=Clock(1.0))
    StateFile(path, inv, clock=Clock(1.0), wall_clock=Clock(60.0)).restore()
    assert inv.ras.cooldowns() == {}
    assert inv.scan(None).by_pci()[pci].healthy


def test_learned_skus_are_kept_until_qaic_util_or_an_override_says_otherwise(
    node: FakeNode, tmp_path: Path
) -> None:
    pro = next(s for s in node.socs if s.sku.value == "pro").pci_address
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps({"version": 1, "skus": {pro: {"sku": "pro", "source": "qaic-util"}}})
    )
    inv = Inventory(node.sysfs_root, node.dev_root, {})
    StateFile(path, inv).restore()
    assert inv.scan(None).by_pci()[pro].sku == SkuDecision(Sku.PRO, SkuSource.QAIC_UTIL)
    overridden = Inventory(node.sysfs_root, node.dev_root, {pro: Sku.LITE})
    StateFile(path, overridden).restore()
    assert overridden.scan(None).by_pci()[pro].sku.sku is Sku.LITE


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "Invalid JSON"),
        (b'{"version": 2}', "version"),
        (b'{"version": 1, "ras_cooldown_until": {"0000:01:00.0": "soon"}}', "ras_cooldown_until"),
        (b"\xff\xfe", "Invalid JSON"),
    ],
)
def test_a_corrupt_file_is_logged_and_ignored(
    node: FakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, reason: str
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    inv = Inventory(node.sysfs_root, node.dev_root, {})
    StateFile(path, inv).restore()
    (rec,) = [r for r in caplog.records if getattr(r, "event", None) == "state_file_ignored"]
    assert reason in rec.reason  # type: ignore[attr-defined]
    assert all(s.healthy for s in inv.scan(None).socs)


def test_an_unwritable_file_is_logged_not_raised(
    node: FakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    inv = Inventory(node.sysfs_root, node.dev_root, {}, clock=Clock(0.0))
    inv.ras.restore_cooldown(node.socs[0].pci_address, 10.0)
    StateFile(blocker / "state.json", inv, clock=Clock(0.0)).save()  # parent is a file
    assert [getattr(r, "event", None) for r in caplog.records] == ["state_file_unwritable"]


# -- through the real process -----------------------------------------------------------------


async def test_ras_cooldown_survives_a_plugin_restart(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, plugin_dir: Path
) -> None:
    pci = node.socs[0].pci_address
    # Long enough to outlast the restart on a loaded machine (4 s did not: the second plugin
    # registered after the cool-down had ended), short enough to see it end.
    env = {"QAIC_UE_COOLDOWN_SECONDS": "12", **FAST}
    first = await start_plugin(**env)
    await kubelet.wait_devices(QAIC, healthy=10)
    node.bump_ue_count(pci)
    await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    # in a subdirectory: kubelet deletes every other file of its plugin dir when it restarts
    assert pci in json.loads(default_state_file(plugin_dir).read_text())["ras_cooldown_until"]
    assert await first.stop() == 0

    second = await start_plugin(**env)
    await kubelet.wait_registered(QAIC, 2)
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1)
    assert view.unhealthy == [pci]
    flips = [e for e in second.events("health") if e["pci"] == pci]
    assert flips[0]["healthy"] is False and "ras" in flips[0]["reasons"][0]
    (restored,) = second.events("state_restored")
    assert restored["cooldowns"] == [pci]
    await kubelet.wait_devices(QAIC, healthy=10, timeout=20)  # then the cool-down ends


async def test_learned_skus_survive_a_restart_without_qaic_util(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    pro = next(s for s in node.socs if s.sku.value == "pro").pci_address
    first = await start_plugin(QAIC_SKU_BASED_RESOURCE_ENABLED="1")
    await kubelet.wait_devices(PRO, healthy=1)
    assert await first.stop() == 0
    # qaic-util gone (a broken SDK upgrade): topology alone would call the Pro card Std.
    second = await start_plugin(qaic_util=False, QAIC_SKU_BASED_RESOURCE_ENABLED="1")
    await kubelet.wait_registered(PRO, 2)
    view = await kubelet.wait_devices(PRO, healthy=1)
    assert view.healthy == [pro]
    await kubelet.wait_devices(STD, healthy=1)
    assert {e["pci"]: e["source"] for e in second.events("sku")}[pro] == "qaic-util"


async def test_a_corrupt_state_file_is_one_log_line_and_the_plugin_runs(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "state.json"
    path.parent.mkdir()
    path.write_text('{"version": 1, "ras_cooldown_until": [')
    plugin = await start_plugin(QAIC_STATE_FILE=str(path))
    await kubelet.wait_devices(QAIC, healthy=10)
    (ignored,) = plugin.events("state_file_ignored")
    assert ignored["level"] == "warning" and ignored["path"] == str(path)
    assert "Traceback" not in plugin.log_text()
    assert plugin.returncode is None
