"""udev hints: the real pyudev netlink monitor on the asyncio loop (kernel uevents provoked by
writing to a real device's `uevent` file), the relevance filter on pyudev Devices, dispatch
and failure handling, and the App's wiring (udev event -> immediate re-evaluation)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pyudev

from qaic_device_plugin.config.settings import Settings
from qaic_device_plugin.deviceplugin.app import App
from qaic_device_plugin.qaic.udev import (
    UdevEvent,
    UdevSource,
    UdevUnavailable,
    UdevWatch,
    open_monitor,
    relevant,
)
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode

LOOP = Path("/sys/class/block/loop0/uevent")
NET_LO = Path("/sys/class/net/lo/uevent")


def _can_synthesize() -> str | None:
    """Why the kernel cannot be made to emit a uevent here, or None if it can."""
    if os.geteuid() != 0:
        return "writing a sysfs uevent file needs root"
    if not LOOP.exists():
        return f"{LOOP} does not exist (no loop device to provoke a uevent from)"
    try:
        open_monitor(UdevSource.KERNEL, ["block"])  # closed when collected
    except UdevUnavailable as e:
        return f"no kernel uevent netlink socket here: {e}"
    return None


needs_uevents = pytest.mark.skipif(_can_synthesize() is not None, reason=str(_can_synthesize()))


def synth(path: Path, action: str, *args: str) -> None:
    """A synthetic uevent (Documentation/ABI/testing/sysfs-uevent): the kernel sends a real
    netlink message for the device; nothing about the device changes."""
    path.write_text(" ".join([action, str(uuid.uuid4()), *args]))


@pytest.fixture
def received() -> list[UdevEvent | None]:
    return []


async def _await_events(
    events: list[UdevEvent | None], n: int, timeout: float = 5.0
) -> list[UdevEvent | None]:
    async with asyncio.timeout(timeout):
        while len(events) < n:
            await asyncio.sleep(0)  # add_reader callbacks run between loop iterations
            await asyncio.sleep(0.005)
    return events


# -- the real monitor pipeline --------------------------------------------------------------------


@needs_uevents
async def test_real_kernel_uevents_reach_the_loop_filtered(
    received: list[UdevEvent | None],
) -> None:
    monitor = open_monitor(UdevSource.KERNEL, ["block"])
    arrived = asyncio.Event()

    def on_event(ev: UdevEvent | None) -> None:
        received.append(ev)
        arrived.set()

    watch = UdevWatch(monitor, on_event, subsystems=["block"])
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0)  # the reader is installed
        if NET_LO.exists():
            synth(NET_LO, "change")  # another subsystem: filtered out by the monitor
        t0 = time.monotonic()
        synth(LOOP, "change", "DBC=3")  # SYNTH_ARG_DBC=3 (keys: alphanumeric only)
        async with asyncio.timeout(2):
            await arrived.wait()
        latency = time.monotonic() - t0
        for action in ("offline", "online"):  # what the qaic driver sends around a reset
            synth(LOOP, action)
        await _await_events(received, 3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not asyncio.get_running_loop().remove_reader(monitor.fileno())  # run() removed it
    assert latency < 0.5, f"uevent took {latency:.3f}s to reach the loop"
    got = [(e.action, e.subsystem, e.name) for e in received if e is not None]
    assert got == [("change", "block", "loop0"), ("offline", "block", "loop0"),
                   ("online", "block", "loop0")]  # fmt: skip
    assert watch.received == 3


@needs_uevents
async def test_real_monitor_for_accel_and_pci_ignores_other_devices(
    received: list[UdevEvent | None],
) -> None:
    """The production filter (accel + qaic PCI functions) on the real kernel stream: events of
    this machine's non-qaic PCI devices are dropped; a block event sent after them proves the
    stream was flowing (a second monitor sees it)."""
    pci_devices = sorted(Path("/sys/bus/pci/devices").iterdir())
    if not pci_devices:
        pytest.skip("no PCI devices in this sandbox to provoke a pci uevent from")
    monitor = open_monitor(UdevSource.KERNEL)  # accel + pci, as the app opens it
    probe = open_monitor(UdevSource.KERNEL, ["pci"])
    watch = UdevWatch(monitor, received.append)
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.sleep(0)
        synth(pci_devices[0] / "uevent", "change")
        loop = asyncio.get_running_loop()
        seen = await loop.run_in_executor(None, lambda: probe.poll(timeout=2))
        assert seen is not None and seen.subsystem == "pci"
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    vendor = int((pci_devices[0] / "vendor").read_text(), 16)
    assert vendor != 0x17CB
    assert received == []  # a non-qaic PCI function is not our business


def test_udev_source_needs_run_udev(tmp_path: Path) -> None:
    with pytest.raises(UdevUnavailable, match="not mounted"):
        open_monitor(UdevSource.UDEV, run_dir=tmp_path / "absent")


# -- relevance on pyudev Devices ------------------------------------------------------------------


@dataclass
class Uevent:
    """What relevant() reads of a pyudev Device received from a monitor: the uevent's action,
    subsystem, name and properties. (pyudev's Devices.from_environment would build real ones,
    but it reads the C environ, which Python's putenv/unsetenv leave corrupted after the first
    call in a process; the real-Device paths are covered by the netlink tests above.)"""

    ACTION: str
    SUBSYSTEM: str
    DEVPATH: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def action(self) -> str:
        return self.ACTION

    @property
    def subsystem(self) -> str:
        return self.SUBSYSTEM

    @property
    def sys_name(self) -> str:
        return self.DEVPATH.rsplit("/", 1)[-1]

    @property
    def properties(self) -> dict[str, str]:
        base = {"ACTION": self.ACTION, "SUBSYSTEM": self.SUBSYSTEM, "DEVPATH": self.DEVPATH}
        return {**base, "SEQNUM": "1", **self.extra}


def uevent(ACTION: str, SUBSYSTEM: str, DEVPATH: str, **extra: str) -> Uevent:
    return Uevent(ACTION, SUBSYSTEM, DEVPATH, extra)


ACCEL_PATH = "/devices/pci0000:30/0000:30:01.1/0000:31:00.0/0000:32:00.0/0000:35:00.0/accel/accel3"


def test_relevant_accel_events() -> None:
    for action in ("add", "remove", "change", "online", "offline"):
        dev = uevent(ACTION=action, SUBSYSTEM="accel", DEVPATH=ACCEL_PATH, SEQNUM="9")
        ev = relevant(dev)
        assert ev is not None and (ev.action, ev.subsystem, ev.name) == (action, "accel", "accel3")
    change = uevent(
        ACTION="change", SUBSYSTEM="accel", DEVPATH=ACCEL_PATH, DBC_ID="4", DBC_STATE="2"
    )
    ev = relevant(change)
    assert ev is not None and ev.detail["DBC_ID"] == "4" and ev.detail["DBC_STATE"] == "2"


def test_relevant_pci_only_for_qaic() -> None:
    path = "/devices/pci0000:30/0000:30:01.1/0000:35:00.0"
    unbind = uevent(ACTION="unbind", SUBSYSTEM="pci", DEVPATH=path, PCI_ID="17CB:A100")
    ev = relevant(unbind)
    assert ev is not None and ev.action == "unbind" and ev.name == "0000:35:00.0"
    bound = uevent(ACTION="bind", SUBSYSTEM="pci", DEVPATH=path, DRIVER="qaic")
    assert relevant(bound) is not None
    nic = uevent(ACTION="remove", SUBSYSTEM="pci", DEVPATH=path, PCI_ID="8086:1572")
    assert relevant(nic) is None
    odd = uevent(ACTION="add", SUBSYSTEM="pci", DEVPATH=path, PCI_ID="zzzz")
    assert relevant(odd) is None


def test_relevant_drops_other_subsystems_and_actions() -> None:
    net = uevent(ACTION="change", SUBSYSTEM="net", DEVPATH="/devices/virtual/net/lo")
    assert relevant(net) is None
    assert relevant(uevent(ACTION="change", SUBSYSTEM="block", DEVPATH="/x/loop0")) is None
    assert relevant(uevent(ACTION="weird", SUBSYSTEM="accel", DEVPATH=ACCEL_PATH)) is None


def test_relevant_on_devices_from_the_real_sys() -> None:
    """A Device read from sysfs (not an event) has no action: never a hint."""
    context = pyudev.Context()
    for path in sorted(Path("/sys/bus/pci/devices").iterdir())[:3]:
        dev = pyudev.Devices.from_sys_path(context, str(path))
        assert dev.subsystem == "pci"
        assert relevant(dev) is None


# -- dispatch and failures (a scripted monitor on a real pipe) ------------------------------------


class ScriptedMonitor:
    """Readable through a real pipe, like the netlink socket; poll() replays a script."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)

    def fileno(self) -> int:
        return self.r

    def kick(self) -> None:
        os.write(self.w, b"x")

    def poll(self, timeout: float | None = None) -> Any:
        if not self.script:
            with contextlib.suppress(BlockingIOError):
                os.read(self.r, 4096)
            return None
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


async def test_dispatch_skips_irrelevant_and_reports_overflow() -> None:
    accel = uevent(ACTION="offline", SUBSYSTEM="accel", DEVPATH=ACCEL_PATH)
    other = uevent(ACTION="change", SUBSYSTEM="block", DEVPATH="/x/loop0")
    mon = ScriptedMonitor([other, accel, OSError(errno.ENOBUFS, "No buffer space"), accel])
    got: list[UdevEvent | None] = []
    watch = UdevWatch(mon, got.append)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0)
    mon.kick()
    await _await_events(got, 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    mon.close()
    assert [None if e is None else e.action for e in got] == ["offline", None, "offline"]


async def test_monitor_failure_ends_the_watch_with_the_error() -> None:
    mon = ScriptedMonitor([OSError(errno.EBADF, "Bad file descriptor")])
    watch = UdevWatch(mon, lambda e: None)
    task = asyncio.create_task(watch.run())
    await asyncio.sleep(0)
    mon.kick()
    with pytest.raises(OSError, match="Bad file descriptor"):
        await asyncio.wait_for(task, 5)
    mon.close()


# -- the App: a udev event re-evaluates at once ---------------------------------------------------


async def test_app_udev_event_reflects_a_subsystem_restart_at_once(
    node: FakeNode, plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No inotify event fires for a sysfs attribute and the resync is an hour away: only the
    udev hint can make the dbc state change visible, and it does within a fraction of a second."""
    accel = node.socs[2]
    path = ACCEL_PATH.replace("accel3", f"accel{accel.accel_index}")
    mon = ScriptedMonitor([])
    monkeypatch.setattr("qaic_device_plugin.qaic.udev.open_monitor", lambda source: mon)
    settings = Settings(
        QAIC_SYSFS_ROOT=node.sysfs_root,
        QAIC_DEV_ROOT=node.dev_root,
        QAIC_DEVICE_PLUGIN_DIR=plugin_dir,
        QAIC_UTIL_PATH=str(node.root / "absent"),
        QAIC_RESYNC_SECONDS=3600,
        # never the host's kubelet (one may run on this machine): no PodResources here
        QAIC_POD_RESOURCES_SOCKET=node.root / "pod-resources" / "kubelet.sock",
    )
    app = App(settings)
    stop = asyncio.Event()
    async with KubeletSim(plugin_dir) as kubelet:
        run = asyncio.create_task(app.run(stop))
        await kubelet.wait_devices("qualcomm.com/qaic", healthy=10)
        node.set_dbc_state(accel.pci_address, 7, 2)  # before-shutdown
        mon.script.append(
            uevent(ACTION="change", SUBSYSTEM="accel", DEVPATH=path, DBC_ID="7", DBC_STATE="2")
        )
        t0 = time.monotonic()
        mon.kick()
        view = await kubelet.wait_devices("qualcomm.com/qaic", healthy=9, unhealthy=1, timeout=2)
        assert time.monotonic() - t0 < 1.0
        assert view.unhealthy == [accel.pci_address]
        node.set_dbc_state(accel.pci_address, 7, 5)  # after-power-up
        mon.script.append(
            uevent(ACTION="change", SUBSYSTEM="accel", DEVPATH=path, DBC_ID="7", DBC_STATE="5")
        )
        mon.kick()
        await kubelet.wait_devices("qualcomm.com/qaic", healthy=10, timeout=2)
        stop.set()
        assert await asyncio.wait_for(run, 10) == 0
    mon.close()
