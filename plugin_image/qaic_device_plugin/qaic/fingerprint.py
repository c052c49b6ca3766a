"""A cheap fingerprint of everything a full scan reads, so the periodic safety rescan costs a
few dozen syscalls instead of a full discovery (issue 11: the node pays for every idle tick).

What it covers, and how:
- PCI functions appearing or leaving: the listing of `bus/pci/devices`;
- accel entries appearing, leaving or moving: `class/accel` names and link targets;
- device nodes: `dev/accel` names with inode, device number and mode;
- per known SoC: its driver link, the inode and mtime of its PCI function and accel
  directories (a SoC re-created by a reset gets new inodes; an attribute replaced by rename
  changes its directory's mtime), and the content of `ue_count`, the one RAS counter that
  marks a SoC unhealthy (sysfs attributes keep their mtime when their value changes, so it
  is read, not stat'ed).

What it cannot see: a value change of a sysfs attribute other than `ue_count` with no uevent
(a `dbc<N>_state` in real sysfs; the driver sends KOBJ_CHANGE for it). The full rescan every
QAIC_FULL_RESCAN_SECONDS catches that, and udev events trigger a full scan at once.
An unreadable path contributes its errno: a change in readability is a change too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .model import Soc

Fingerprint = tuple[object, ...]


def _listing(path: str) -> object:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError as e:
        return ("errno", e.errno)


def _links(path: str) -> object:
    try:
        names = sorted(os.listdir(path))
    except OSError as e:
        return ("errno", e.errno)
    out: list[tuple[str, str]] = []
    for name in names:
        try:
            out.append((name, os.readlink(os.path.join(path, name))))
        except OSError as e:
            out.append((name, f"errno {e.errno}"))
    return tuple(out)


def _nodes(path: str) -> object:
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.name)
            out = []
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                    out.append((e.name, st.st_ino, st.st_rdev, st.st_mode))
                except OSError as err:
                    out.append((e.name, err.errno or 0, 0, 0))
            return tuple(out)
    except OSError as e:
        return ("errno", e.errno)


def _stat(path: str) -> object:
    try:
        st = os.stat(path)
        return (st.st_ino, st.st_mtime_ns)
    except OSError as e:
        return ("errno", e.errno)


def _readlink(path: str) -> object:
    try:
        return os.readlink(path)
    except OSError as e:
        return ("errno", e.errno)


def _read(path: str) -> object:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO in a broken tree
    except OSError as e:
        return ("errno", e.errno)
    try:
        return os.read(fd, 64)
    except OSError as e:
        return ("errno", e.errno)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=4)
def _soc_paths(sys_: str, socs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, ...], ...]:
    """Per SoC: driver link, PCI function dir, accel dir, ue_count. Joined once per SoC set
    (path joins were 40% of a tick's Python time)."""
    out = []
    for pci, accel in socs:
        fn = os.path.join(sys_, "bus", "pci", "devices", pci)
        out.append((os.path.join(fn, "driver"), fn, os.path.join(sys_, "class", "accel", accel),
                    os.path.join(fn, "ue_count")))
    return tuple(out)


def fingerprint(sysfs_root: Path, dev_root: Path, socs: Iterable[Soc]) -> Fingerprint:
    """Equal fingerprints: a full scan would read what it read last time (see module doc)."""
    sys_ = str(sysfs_root)
    parts: list[object] = [
        _listing(os.path.join(sys_, "bus", "pci", "devices")),
        _links(os.path.join(sys_, "class", "accel")),
        _nodes(os.path.join(str(dev_root), "accel")),
    ]
    for driver, fn, accel, ue_count in _soc_paths(
        sys_, tuple((s.pci_address, s.accel_name) for s in socs)
    ):
        parts += [_readlink(driver), _stat(fn), _stat(accel), _read(ue_count)]
    return tuple(parts)


class RescanGate:
    """Whether a periodic resync tick needs the full scan: the fingerprint changed since the
    one taken just before the last full scan, or `full_period` seconds have passed."""

    def __init__(
        self, sysfs_root: Path, dev_root: Path, full_period: float, clock: Callable[[], float]
    ) -> None:
        self.sysfs_root, self.dev_root = sysfs_root, dev_root
        self.full_period, self.clock = full_period, clock
        self._last: Fingerprint | None = None
        self._at = float("-inf")

    def take(self, socs: Iterable[Soc]) -> Fingerprint:
        return fingerprint(self.sysfs_root, self.dev_root, socs)

    def scanning(self, socs: Iterable[Soc]) -> Fingerprint:
        """Call just before a full scan: a change during the scan shows at the next tick."""
        self._at = self.clock()
        return self.take(socs)

    def scanned(self, before: Fingerprint, *, same_socs: bool) -> None:
        """After the scan; SoCs that came or went are fingerprinted from the next scan on."""
        self._last = before if same_socs else None

    @property
    def settled(self) -> bool:
        """A fingerprint of the current SoC set exists (False until a scan found the same SoCs
        as the one before it): until then every tick is a full scan, so it should come soon."""
        return self._last is not None

    def due(self, socs: Iterable[Soc]) -> bool:
        return self.clock() - self._at >= self.full_period or self.take(socs) != self._last
