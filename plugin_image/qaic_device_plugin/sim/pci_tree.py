"""The fake node's PCI tree: what a card, a SoC and a PCI function are, the ids and numbers the
real hardware uses, and the demo's cards (sim/node.py builds and writes the tree from these)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..qaic.model import Sku

ACCEL_MAJOR = 261
QAIC_VENDOR = 0x17CB
QAIC_DEVICE = 0xA100
QAIC_DEVICE_080 = 0xA080
QAIC_CLASS = 0x120000  # processing accelerator
BRIDGE_CLASS = 0x060400
# Illustrative ids for the parts around the SoCs; nothing reads them but realism.
ROOT_PORT_ID = (0x1022, 0x1483)  # AMD root port
CARD_SWITCH_ID = (0x10B5, 0x8733)  # on-card PCIe switch
PLATFORM_SWITCH_ID = (0x1000, 0xC010)  # server-board PCIe switch
SOC_SUBSYSTEM = (0x17CB, 0x0100)
FOREIGN_PCI = "0000:00:0b.0"  # Intel NPU (Meteor Lake), another accel driver's device
FOREIGN_ID = (0x8086, 0x7D1D)

MULTI_SOC_SKUS = frozenset({Sku.ULTRA, Sku.ULTRA_PLUS, Sku.ULTRA_080})
SOCS_PER_MULTI_CARD = 4
# (Dram Total MB, Nsp Total) per SoC, as the fake qaic-util reports them
SKU_RESOURCES: dict[Sku, tuple[int, int]] = {
    Sku.STANDARD: (16384, 14),
    Sku.PRO: (32768, 16),
    Sku.ULTRA: (32768, 16),
    Sku.LITE: (8192, 8),
    Sku.M2: (8192, 8),
    Sku.AUTO: (16384, 14),
    Sku.ULTRA_PLUS: (32768, 16),
    Sku.AI080: (16384, 8),
    Sku.ULTRA_080: (32768, 8),
}
STATE_NAME = "qaic-util-state.json"
DBCS_PER_SOC = 16  # AIC100: one accel dbc<N>_state file per DMA bridge channel (kernel 6.19+)
RAS_COUNTERS = ("ce_count", "ue_count", "ue_nonfatal_count")  # on the PCI function
STATUSES = ("Ready", "Error", "Initializing")
_HOST_BUSES = (0x00, 0x80, 0x40, 0xC0, 0x20, 0x60, 0xA0, 0xE0)  # one host bridge per NUMA node
_BUSES_PER_HOST = 0x20

DeviceNodes = Literal["auto", "char", "file"]


@dataclass(frozen=True)
class CardSpec:
    """One card to put in the node.

    Ultra-family cards get 4 SoCs behind an on-card switch; other SKUs 1 SoC. A card with
    `platform_switch` set hangs off a downstream port of that (per NUMA node) server-board
    switch instead of a root port of its own.
    """

    sku: Sku
    numa_node: int = 0
    platform_switch: int | None = None


@dataclass(frozen=True)
class FakeSoc:
    pci_address: str
    accel_index: int
    card_index: int
    sku: Sku
    numa_node: int  # as written to sysfs; -1 means none
    qid: int  # index among present qaic SoCs in PCI-address order
    card_id: str  # the physical card: its on-card switch upstream port, or the SoC's own address


@dataclass
class _Fn:
    """One PCI function (bridge, SoC or foreign device) of the fake tree."""

    address: str
    host_bus: int
    parent: _Fn | None
    vendor: int
    device: int
    pci_class: int
    numa_node: int
    subsystem: tuple[int, int] = (0, 0)
    driver: str | None = None

    @property
    def relpath(self) -> Path:
        """Path below sys/ (devices/pci0000:XX/.../<BDF>)."""
        chain: list[str] = []
        fn: _Fn | None = self
        while fn is not None:
            chain.append(fn.address)
            fn = fn.parent
        return Path("devices", f"pci0000:{self.host_bus:02x}", *reversed(chain))


@dataclass
class _Soc:
    fn: _Fn
    card_index: int
    sku: Sku
    card_id: str
    accel: int = -1
    status: str = "Ready"
    bound: bool = True  # to the qaic driver
    dbc_states: list[str] = field(default_factory=list)
    ras: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RAS_COUNTERS, 0))


@dataclass
class _Attach:
    """Where a platform switch takes new cards: its internal bus and next downstream port."""

    upstream: _Fn
    internal_bus: int
    next_port: int = 0


@dataclass
class _Host:
    bus: int
    next_bus: int
    next_port: int = 0
    switches: dict[int, _Attach] = field(default_factory=dict)


def _bdf(bus: int, dev: int, fn: int) -> str:
    return f"0000:{bus:02x}:{dev:02x}.{fn}"


def _link(link: Path, target: Path) -> None:
    """A relative symlink spelled as kernfs spells it (bind-mounting the tree keeps it valid).

    kernfs climbs to a strict ancestor of the target, so a link to an ancestor reads
    `../../../0000:35:00.0`, never `../..`.
    """
    os.symlink(os.path.join(os.path.relpath(target.parent, link.parent), target.name), link)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        _unlink(Path(tmp))
        raise


def _specs(ultra: int, std: int, pro: int) -> Iterator[CardSpec]:
    """The demo's node: cards alternate between NUMA nodes 0 and 1."""
    kinds = [Sku.ULTRA] * ultra + [Sku.STANDARD] * std + [Sku.PRO] * pro
    for i, sku in enumerate(kinds):
        yield CardSpec(sku, numa_node=i % 2)


#: The project demo's node: 2 Ultra, 1 Standard, 1 Pro over NUMA nodes 0 and 1.
DEMO_CARDS: tuple[CardSpec, ...] = tuple(_specs(2, 1, 1))
