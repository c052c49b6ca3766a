"""Find the node's Cloud AI 100 SoCs by reading sysfs, and nothing else.

Sysfs is the kernel's own truth about which SoCs exist, where they sit on PCIe and which
NUMA node they belong to; it needs no vendor tool. Anything odd in the tree (a half-removed
device, a driver from another vendor, a file we cannot read) is skipped and reported, never
raised: one bad entry must not take a node's healthy SoCs out of service.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .model import CardEvidence, Discovery, Skipped, Soc

log = logging.getLogger(__name__)

QAIC_VENDOR = 0x17CB
QAIC_DEVICES = frozenset({0xA100, 0xA080, 0xA110})  # AIC100, AIC080, AIC200
PCI_CLASS_BRIDGE = 0x0604  # PCI-to-PCI bridge (root ports, switch ports)
MAX_SOCS_PER_CARD = 4  # Ultra; more SoCs behind one switch means a platform switch

_PCI_RE = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_ACCEL_RE = re.compile(r"^accel(\d+)$")
_READ_LIMIT = 4096  # a sysfs attribute is at most one page


class _Bad(Exception):
    """An entry that cannot be used; the message is the Skipped reason."""


@dataclass(frozen=True, slots=True)
class _PciFn:
    address: str
    path: str  # resolved absolute path of the PCI function directory
    vendor: int
    device: int

    @property
    def is_qaic(self) -> bool:
        return self.vendor == QAIC_VENDOR and self.device in QAIC_DEVICES


def _read_attr(path: str) -> str:
    """Read one sysfs attribute without ever blocking (a FIFO) or slurping a huge file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise _Bad(f"{os.path.basename(path)} is missing") from None
    except OSError as exc:
        raise _Bad(f"cannot open {os.path.basename(path)}: {exc.strerror or exc}") from None
    try:
        data = os.read(fd, _READ_LIMIT)
    except OSError as exc:
        raise _Bad(f"cannot read {os.path.basename(path)}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return data.decode("ascii", errors="replace").strip()


def _read_int(path: str, base: int) -> int:
    text = _read_attr(path)
    try:
        return int(text, base)
    except ValueError:
        raise _Bad(f"{os.path.basename(path)} is not a number: {text[:40]!r}") from None


def _resolve(path: str, root: str) -> str:
    """Resolve symlinks strictly, refusing loops, dangling links and escapes from the root."""
    try:
        real = os.path.realpath(path, strict=True)
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _Bad(f"cannot resolve: {reason}") from None
    if os.path.commonpath([real, root]) != root:
        raise _Bad(f"resolves outside the sysfs root: {real}")
    return real


def _pci_fn(path: str, root: str) -> _PciFn:
    real = _resolve(path, root)
    address = os.path.basename(real)
    if not _PCI_RE.match(address):
        raise _Bad(f"not a PCI function: {address!r}")
    if not os.path.isdir(real):
        raise _Bad("PCI function is not a directory")
    vendor = _read_int(os.path.join(real, "vendor"), 16)
    device = _read_int(os.path.join(real, "device"), 16)
    return _PciFn(address, real, vendor, device)


def _is_bridge(path: str) -> bool:
    if not _PCI_RE.match(os.path.basename(path)):
        return False  # e.g. the host bridge "pci0000:30", which is not a PCI function
    try:
        return _read_int(os.path.join(path, "class"), 16) >> 8 == PCI_CLASS_BRIDGE
    except _Bad:
        return False


def _upstream_port(fn_path: str) -> str | None:
    """The switch upstream port above a SoC, if its parent and grandparent are both bridges."""
    parent = os.path.dirname(fn_path)
    grandparent = os.path.dirname(parent)
    if _is_bridge(parent) and _is_bridge(grandparent):
        return grandparent
    return None


def _numa_node(fn_path: str) -> int | None:
    path = os.path.join(fn_path, "numa_node")
    if not os.path.lexists(path):
        return None  # kernels built without CONFIG_NUMA have no such file
    node = _read_int(path, 10)
    if node < -1:
        raise _Bad(f"numa_node is out of range: {node}")
    return None if node == -1 else node


class _Walk:
    def __init__(self, sysfs_root: Path) -> None:
        self.root = os.path.realpath(sysfs_root)
        self.skipped: dict[str, Skipped] = {}

    def skip(self, path: str, reason: str) -> None:
        if path in self.skipped:
            return
        self.skipped[path] = Skipped(path, reason)
        log.warning(
            "sysfs entry %s skipped: %s",
            path,
            reason,
            extra={"event": "sysfs_skipped", "path": path, "reason": reason},
        )

    def listdir(self, rel: str) -> list[str]:
        path = os.path.join(self.root, rel)
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []  # driver not loaded / no PCI: nothing to find, nothing wrong
        except OSError as exc:
            self.skip(path, f"cannot list: {exc.strerror or exc}")
            return []

    def qaic_functions(self) -> dict[str, _PciFn]:
        """Every qaic PCI function, with or without an accel node (the runtime's QID space)."""
        found: dict[str, _PciFn] = {}
        base = os.path.join(self.root, "bus", "pci", "devices")
        for name in self.listdir(os.path.join("bus", "pci", "devices")):
            path = os.path.join(base, name)
            try:
                fn = _pci_fn(path, self.root)
            except _Bad as bad:
                self.skip(path, str(bad))
                continue
            if fn.is_qaic:
                found[fn.address] = fn
        return found

    def card_ids(self, functions: dict[str, _PciFn]) -> dict[str, str]:
        """Candidate cards: 2-4 qaic functions below one switch (unbound ones count, so a
        card keeps its shape while a SoC is off its driver); everything else is alone."""
        groups: dict[str, list[str]] = {}
        for fn in functions.values():
            port = _upstream_port(fn.path)
            if port is not None:
                groups.setdefault(port, []).append(fn.address)
        card: dict[str, str] = {address: address for address in functions}
        for port, members in groups.items():
            if 2 <= len(members) <= MAX_SOCS_PER_CARD:
                for address in members:
                    card[address] = os.path.basename(port)
        return card

    def run(self) -> Discovery:
        functions = self.qaic_functions()
        # QIDs count every 17cb qaic function whatever its driver (qaic, vfio-pci, none), as
        # the runtime's libpci scan does; qaic-util's own map, when there, is checked in
        # inventory and wins (README "QAIC_VISIBLE_DEVICES carries runtime QIDs").
        qids = {address: i for i, address in enumerate(sorted(functions))}
        cards = self.card_ids(functions)
        socs: dict[str, Soc] = {}
        foreign: list[str] = []
        base = os.path.join(self.root, "class", "accel")
        for name in self.listdir(os.path.join("class", "accel")):
            path = os.path.join(base, name)
            m = _ACCEL_RE.match(name)
            if not m:
                self.skip(path, "name is not accelN")
                continue
            try:
                fn = _pci_fn(os.path.join(path, "device"), self.root)
                if not fn.is_qaic:
                    foreign.append(name)
                    continue
                if fn.address not in qids:
                    raise _Bad(f"{fn.address} is not listed under bus/pci/devices; QID unknown")
                if fn.address in socs:
                    raise _Bad(f"{fn.address} already has {socs[fn.address].accel_name}")
                numa = _numa_node(fn.path)
            except _Bad as bad:
                self.skip(path, str(bad))
                continue
            socs[fn.address] = Soc(
                pci_address=fn.address,
                accel_index=int(m.group(1)),
                pci_device=fn.device,
                numa_node=numa,
                card_id=cards[fn.address],
                qid=qids[fn.address],
                # a shared switch is only a hint: an Ultra's on-card switch and a server
                # board's switch with single-SoC cards look the same (sku/inventory decide)
                card_evidence=(
                    CardEvidence.ALONE if cards[fn.address] == fn.address else CardEvidence.TOPOLOGY
                ),
            )
        return Discovery(
            socs=tuple(socs[a] for a in sorted(socs)),
            skipped=tuple(self.skipped.values()),
            foreign=tuple(foreign),
        )


def discover(sysfs_root: Path) -> Discovery:
    """Read the SoCs under `sysfs_root` (normally /sys; any copy or bind mount works).

    Never raises for any content of the tree: bad entries end up in `Discovery.skipped`.
    """
    try:
        return _Walk(sysfs_root).run()
    except Exception as exc:  # last resort: the contract is "never fatal"
        path = str(sysfs_root)
        reason = f"unexpected error: {exc!r}"
        log.exception(
            "sysfs discovery failed",
            extra={"event": "sysfs_skipped", "path": path, "reason": reason},
        )
        return Discovery(socs=(), skipped=(Skipped(path, reason),))
