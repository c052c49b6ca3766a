"""udev events as hints to re-evaluate health at once (a reset shows in well under a second).

The qaic driver sends KOBJ_OFFLINE / KOBJ_ONLINE uevents on the accel device around a SoC
reset and KOBJ_CHANGE with DBC_ID= / DBC_STATE= when a sub-system restarts; the PCI core sends
bind / unbind / add / remove for the SoC's PCI function. An event is only ever a hint: the
caller re-reads sysfs, so a lost event costs latency (inotify and the periodic resync catch up),
never correctness.

The pyudev monitor runs on the asyncio loop through `loop.add_reader(monitor.fileno())`, no
threads. Sources: `udev` (events after udevd processed them, so /dev is up to date; needs the
host's /run/udev, which the DaemonSet mounts) or `kernel` (raw kernel uevents; no udevd needed,
but the pod must share the host's network namespace, as the DaemonSet's hostNetwork does).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .discovery import QAIC_VENDOR

log = logging.getLogger(__name__)

UDEV_RUN_DIR = Path("/run/udev")
SUBSYSTEMS = ("accel", "pci")
ACTIONS = frozenset({"add", "remove", "change", "online", "offline", "bind", "unbind", "move"})
_DRAIN = 64  # events handled per wake-up before yielding to the loop (it calls us again)


class UdevSource(enum.StrEnum):
    UDEV = "udev"
    KERNEL = "kernel"


class UdevUnavailable(Exception):
    """The monitor cannot be created here; the message says why."""


@dataclass(frozen=True, slots=True)
class UdevEvent:
    action: str
    subsystem: str
    name: str  # sys_name, e.g. accel3 or 0000:35:00.0
    detail: Mapping[str, str]  # DBC_ID / DBC_STATE / DRIVER / PCI_ID when present


def _properties(device: Any) -> dict[str, str]:
    """The uevent's properties (pyudev.Device.properties), as plain strings."""
    props = device.properties
    return {str(k): str(props[k]) for k in props}


def _qaic_pci(props: Mapping[str, str]) -> bool:
    vendor = props.get("PCI_ID", "").partition(":")[0]
    try:
        if int(vendor, 16) == QAIC_VENDOR:
            return True
    except ValueError:
        pass
    return props.get("DRIVER") == "qaic"


def relevant(device: Any, subsystems: Iterable[str] = SUBSYSTEMS) -> UdevEvent | None:
    """The event, if it may change a qaic SoC's health or presence; else None.

    Uses only what the uevent carries (a removed device has no sysfs left to read): every
    accel event (another driver's accel device costs one cheap rescan), PCI events only for a
    qaic function (vendor 0x17cb, or bound to qaic).
    """
    props = _properties(device)
    action = str(device.action or props.get("ACTION", ""))
    subsystem = str(device.subsystem or props.get("SUBSYSTEM", ""))
    if action not in ACTIONS or subsystem not in subsystems:
        return None
    if subsystem == "pci" and not _qaic_pci(props):
        return None
    keep = ("DBC_ID", "DBC_STATE", "DRIVER", "PCI_ID", "SEQNUM")
    name = str(device.sys_name or props.get("DEVPATH", "").rsplit("/", 1)[-1])
    return UdevEvent(action, subsystem, name, {k: props[k] for k in keep if k in props})


def open_monitor(
    source: UdevSource,
    subsystems: Sequence[str] = SUBSYSTEMS,
    *,
    run_dir: Path = UDEV_RUN_DIR,
) -> Any:
    """A started, non-blocking pyudev Monitor filtered to `subsystems`.

    Raises UdevUnavailable when it cannot work here: the udev source without the host's
    /run/udev (libudev would silently deliver nothing), no libudev, or a netlink socket the
    sandbox refuses.
    """
    if source is UdevSource.UDEV and not run_dir.is_dir():
        raise UdevUnavailable(f"{run_dir} is not mounted (mount the host's /run/udev)")
    try:
        import pyudev

        context = pyudev.Context()
        monitor = pyudev.Monitor.from_netlink(context, source=source.value)
        for subsystem in subsystems:
            monitor.filter_by(subsystem)
        monitor.start()
    except ImportError as e:
        raise UdevUnavailable(f"libudev not available: {e}") from None
    except (OSError, ValueError) as e:
        raise UdevUnavailable(f"cannot open a {source.value} netlink monitor: {e}") from None
    return monitor


OnEvent = Callable[[UdevEvent | None], None]  # None: events were lost, re-read everything


class UdevWatch:
    """Feeds a monitor's events to `on_event` from the event loop until the monitor fails."""

    def __init__(
        self,
        monitor: Any,
        on_event: OnEvent,
        subsystems: Sequence[str] = SUBSYSTEMS,
    ) -> None:
        self.monitor = monitor
        self.on_event = on_event
        self.subsystems = tuple(subsystems)
        self.received = 0  # relevant events passed on
        self._failed: asyncio.Future[None] | None = None

    async def run(self) -> None:
        """Runs until cancelled; raises if the monitor's socket fails (the app then exits
        non-zero rather than silently lose its fast path). The netlink socket closes when the
        monitor is garbage-collected (pyudev unrefs it then)."""
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        fd = self.monitor.fileno()
        loop.add_reader(fd, self._readable)
        try:
            await self._failed
        finally:
            loop.remove_reader(fd)

    def _fail(self, exc: BaseException) -> None:
        if self._failed is not None and not self._failed.done():
            self._failed.set_exception(exc)

    def _readable(self) -> None:
        for _ in range(_DRAIN):
            try:
                device = self.monitor.poll(timeout=0)
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # the kernel dropped events: we missed some
                    log.warning(
                        "udev events lost; rescanning",
                        extra={"event": "udev_overflow"},
                    )
                    self.on_event(None)
                    continue
                self._fail(e)
                return
            except Exception as e:  # a bug or a broken libudev: let the app see it
                self._fail(e)
                return
            if device is None:
                return
            event = relevant(device, self.subsystems)
            if event is None:
                continue
            self.received += 1
            log.debug(
                "udev event",
                extra={
                    "event": "udev",
                    "action": event.action,
                    "subsystem": event.subsystem,
                    "device": event.name,
                    **{k.lower(): v for k, v in event.detail.items()},
                },
            )
            self.on_event(event)


def open_udev_watch(source: UdevSource, on_event: OnEvent) -> UdevWatch | None:
    """A watch on `source`, or None (said once) when it cannot be opened: inotify and the
    periodic rescan still find every change, only later."""
    try:
        monitor = open_monitor(source)
    except UdevUnavailable as e:
        log.warning(
            "udev events unavailable; relying on inotify and the periodic resync",
            extra={"event": "udev_unavailable", "source": source.value, "reason": str(e)},
        )
        return None
    log.info("watching udev events", extra={"event": "udev_started", "source": source.value})
    return UdevWatch(monitor, on_event)
