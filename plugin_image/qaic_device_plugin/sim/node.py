"""A fake node: a sysfs tree, /dev/accel nodes and a qaic-util, laid out like the real thing.

Tests, the demo and the container image all run the real plugin against this instead of
hardware, so the layout follows the upstream qaic driver exactly (relative symlinks as the
kernel makes them, so the tree still works when bind-mounted elsewhere). Two traps are built
in on purpose: an Intel NPU holds accel0, and qaic accel numbers are not in PCI-address
order, so code that confuses accel numbers with QIDs fails here rather than on a customer's
node.

    python -m qaic_device_plugin.sim.node --root /tmp/node [--ultra 2 --std 1 --pro 1] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..qaic.model import Sku
from ..qaic.sku import SKU_TYPE_TEXT

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


class FakeNode:
    """A node with Cloud AI 100 cards under `root` (sys/, dev/, bin/qaic-util)."""

    def __init__(
        self,
        root: Path,
        cards: Sequence[CardSpec],
        *,
        foreign_accel: bool = True,
        device_nodes: DeviceNodes = "auto",
        dbcs: int = DBCS_PER_SOC,
        ras: bool = True,
        qaic_util_path: Path | None = None,
        qaic_util_python: str | None = None,
    ) -> None:
        """`dbcs=0` / `ras=False`: an older kernel without dbc<N>_state / RAS counter files.

        `qaic_util_path` (default root/bin/qaic-util) puts the tool where a deployment looks,
        e.g. root/opt/qti-aic/tools/qaic-util for a hostPath mount of the SDK dir; its state
        file sits beside it. `qaic_util_python` is the fake tool's interpreter (default: found
        through /usr/bin/env), e.g. /usr/bin/python3 inside an image without /usr/bin/env."""
        self.root = Path(root)
        self.sysfs_root = self.root / "sys"
        self.dev_root = self.root / "dev"
        self.qaic_util_path = qaic_util_path or self.root / "bin" / "qaic-util"
        self.qaic_util_python = qaic_util_python
        self.state_path = self.qaic_util_path.with_name(STATE_NAME)
        self.foreign_accel = foreign_accel
        self.device_nodes: DeviceNodes = device_nodes
        self.dbcs = dbcs
        self.ras = ras
        self.device_node_kind: Literal["char", "file"] | None = None  # decided by write()
        self.qaic_util_mode: str | None = None
        self.qaic_util_qid_order: list[str] | None = None  # None: PCI-address order
        self.written = False
        self._hosts: dict[int, _Host] = {}
        self._cards: list[CardSpec] = []
        self._socs: dict[str, _Soc] = {}
        self._foreign: _Fn | None = None
        self._accels: set[int] = set()
        if foreign_accel:
            self._foreign = _Fn(
                FOREIGN_PCI,
                0x00,
                None,
                *FOREIGN_ID,
                pci_class=QAIC_CLASS,
                numa_node=-1,
                subsystem=FOREIGN_ID,
                driver="intel_vpu",
            )
            self._accels.add(0)
        planned: list[_Soc] = []
        for spec in cards:
            planned += self._plan_card(spec)
        # The kernel probes asynchronously: number the SoCs against PCI-address order.
        order = sorted(planned, key=lambda s: s.fn.address, reverse=True)
        numbers = [self._alloc_accel() for _ in order]
        for i, soc in enumerate(order):
            soc.accel = numbers[i]
        self._break_fixed_points()

    # ----- planning -------------------------------------------------------------------

    def _host(self, numa_node: int) -> _Host:
        if numa_node not in self._hosts:
            if len(self._hosts) >= len(_HOST_BUSES):
                raise ValueError("the fake node supports at most 8 NUMA nodes")
            bus = _HOST_BUSES[len(self._hosts)]
            self._hosts[numa_node] = _Host(bus=bus, next_bus=bus + 1)
        return self._hosts[numa_node]

    def _bus(self, host: _Host) -> int:
        if host.next_bus >= host.bus + _BUSES_PER_HOST:
            raise ValueError(f"too many cards on host bridge pci0000:{host.bus:02x}")
        host.next_bus += 1
        return host.next_bus - 1

    def _root_port(self, host: _Host, numa: int) -> _Fn:
        k = host.next_port
        host.next_port += 1
        dev = 1 + k // 7
        if host.bus == 0 and dev >= 0x0B:
            dev += 1  # 00:0b.0 is the foreign NPU
        if dev > 0x1F:
            raise ValueError(f"too many root ports on pci0000:{host.bus:02x}")
        return _Fn(
            _bdf(host.bus, dev, 1 + k % 7),
            host.bus,
            None,
            *ROOT_PORT_ID,
            pci_class=BRIDGE_CLASS,
            numa_node=numa,
            driver="pcieport",
        )

    def _bridge(self, host: _Host, address: str, parent: _Fn, ids: tuple[int, int]) -> _Fn:
        return _Fn(
            address,
            host.bus,
            parent,
            *ids,
            pci_class=BRIDGE_CLASS,
            numa_node=parent.numa_node,
            driver="pcieport",
        )

    def _attach_point(self, spec: CardSpec, host: _Host) -> _Fn:
        """The bridge a new card hangs off: a fresh root port or a platform-switch port."""
        if spec.platform_switch is None:
            return self._root_port(host, spec.numa_node)
        att = host.switches.get(spec.platform_switch)
        if att is None:
            port = self._root_port(host, spec.numa_node)
            bus = self._bus(host)
            upstream = self._bridge(host, _bdf(bus, 0, 0), port, PLATFORM_SWITCH_ID)
            att = host.switches[spec.platform_switch] = _Attach(upstream, self._bus(host))
        if att.next_port > 0x1F:
            raise ValueError("too many cards on one platform switch")
        address = _bdf(att.internal_bus, att.next_port, 0)
        down = self._bridge(host, address, att.upstream, PLATFORM_SWITCH_ID)
        att.next_port += 1
        return down

    def _plan_card(self, spec: CardSpec) -> list[_Soc]:
        index = len(self._cards)
        self._cards.append(spec)
        host = self._host(spec.numa_node)
        parent = self._attach_point(spec, host)
        device = QAIC_DEVICE_080 if spec.sku in (Sku.AI080, Sku.ULTRA_080) else QAIC_DEVICE
        socs: list[_Soc] = []

        def soc_fn(address: str, parent: _Fn) -> _Fn:
            return _Fn(
                address,
                host.bus,
                parent,
                QAIC_VENDOR,
                device,
                pci_class=QAIC_CLASS,
                numa_node=spec.numa_node,
                subsystem=SOC_SUBSYSTEM,
                driver="qaic",
            )

        if spec.sku in MULTI_SOC_SKUS:
            up = self._bridge(host, _bdf(self._bus(host), 0, 0), parent, CARD_SWITCH_ID)
            internal = self._bus(host)
            for i in range(SOCS_PER_MULTI_CARD):
                down = self._bridge(host, _bdf(internal, i, 0), up, CARD_SWITCH_ID)
                fn = soc_fn(_bdf(self._bus(host), 0, 0), down)
                socs.append(_Soc(fn, index, spec.sku, card_id=up.address))
        else:
            fn = soc_fn(_bdf(self._bus(host), 0, 0), parent)
            socs.append(_Soc(fn, index, spec.sku, card_id=fn.address))
        for soc in socs:
            self._socs[soc.fn.address] = soc
        return socs

    def _alloc_accel(self) -> int:
        """Lowest free accel minor, as the kernel's accel core allocates them."""
        n = 0
        while n in self._accels:
            n += 1
        self._accels.add(n)
        return n

    def _break_fixed_points(self) -> None:
        by_qid = sorted(self._socs.values(), key=lambda s: s.fn.address)
        for qid, soc in enumerate(by_qid):
            if soc.accel == qid and len(by_qid) > 1:
                other = by_qid[qid - 1] if qid + 1 == len(by_qid) else by_qid[qid + 1]
                soc.accel, other.accel = other.accel, soc.accel

    # ----- views ----------------------------------------------------------------------

    @property
    def socs(self) -> list[FakeSoc]:
        """The present SoCs in PCI-address (= QID) order."""
        ordered = sorted(self._socs.values(), key=lambda s: s.fn.address)
        return [
            FakeSoc(
                pci_address=s.fn.address,
                accel_index=s.accel,
                card_index=s.card_index,
                sku=s.sku,
                numa_node=s.fn.numa_node,
                qid=qid,
                card_id=s.card_id,
            )
            for qid, s in enumerate(ordered)
        ]

    def soc(self, pci: str) -> FakeSoc:
        for s in self.socs:
            if s.pci_address == pci:
                return s
        raise KeyError(pci)

    @property
    def foreign_pci(self) -> str | None:
        return self._foreign.address if self._foreign else None

    def function_dir(self, pci: str) -> Path:
        """The PCI function's directory under sys/devices (for tests that corrupt it)."""
        return self.sysfs_root / self._get(pci).fn.relpath

    def device_node(self, pci: str) -> Path:
        return self.dev_root / "accel" / f"accel{self._get(pci).accel}"

    def _get(self, pci: str) -> _Soc:
        try:
            return self._socs[pci]
        except KeyError:
            raise KeyError(f"no SoC at {pci} on this fake node") from None

    # ----- writing --------------------------------------------------------------------

    def write(self) -> None:
        """Create the tree; refuses to write over an existing one."""
        if self.written:
            raise RuntimeError("FakeNode.write() already ran; use add_card() to hot-add")
        for d in (self.sysfs_root, self.dev_root, self.qaic_util_path.parent):
            if d.exists() and any(d.iterdir()):
                raise FileExistsError(f"{d} is not empty; pick a fresh --root")
        sysfs = self.sysfs_root
        for sub in ("devices", "class/accel", "bus/pci/devices", "dev/char"):
            (sysfs / sub).mkdir(parents=True, exist_ok=True)
        for drv in ("qaic", "pcieport", "intel_vpu"):
            drv_dir = sysfs / "bus/pci/drivers" / drv
            drv_dir.mkdir(parents=True, exist_ok=True)
            for attr in ("bind", "unbind", "new_id", "remove_id", "uevent"):
                (drv_dir / attr).touch()
        (self.dev_root / "accel").mkdir(parents=True, exist_ok=True)
        self.qaic_util_path.parent.mkdir(parents=True, exist_ok=True)
        self.device_node_kind = self._decide_device_nodes()
        self.written = True
        written: set[str] = set()
        if self._foreign is not None:
            self._write_fn(self._foreign, written)
            self._write_accel(self._foreign, 0)
        for soc in sorted(self._socs.values(), key=lambda s: s.fn.address):
            self._write_soc(soc, written)
        script = QAIC_UTIL_SCRIPT
        if self.qaic_util_python:
            script = script.replace("#!/usr/bin/env python3", f"#!{self.qaic_util_python}", 1)
        self.qaic_util_path.write_text(script)
        self.qaic_util_path.chmod(0o755)
        self._save_state()

    def _decide_device_nodes(self) -> Literal["char", "file"]:
        if self.device_nodes != "auto":
            return self.device_nodes
        if os.geteuid() != 0:
            return "file"
        probe = self.dev_root / "accel" / ".mknod-probe"
        try:
            os.mknod(probe, stat.S_IFCHR | 0o600, os.makedev(ACCEL_MAJOR, 255))
        except OSError:
            return "file"  # no CAP_MKNOD (e.g. an unprivileged container)
        probe.unlink()
        return "char"

    def _write_fn(self, fn: _Fn, written: set[str]) -> None:
        if fn.address in written:
            return
        if fn.parent is not None:
            self._write_fn(fn.parent, written)
        written.add(fn.address)
        sysfs = self.sysfs_root
        d = sysfs / fn.relpath
        if d.exists():
            return  # hot-add reuses bridges already on disk
        d.mkdir(parents=True)
        attrs = {
            "vendor": f"0x{fn.vendor:04x}",
            "device": f"0x{fn.device:04x}",
            "class": f"0x{fn.pci_class:06x}",
            "subsystem_vendor": f"0x{fn.subsystem[0]:04x}",
            "subsystem_device": f"0x{fn.subsystem[1]:04x}",
            "numa_node": str(fn.numa_node),
            "revision": "0x00",
            "enable": "1",
            "uevent": (
                (f"DRIVER={fn.driver}\n" if fn.driver else "")
                + f"PCI_CLASS={fn.pci_class:X}\nPCI_ID={fn.vendor:04X}:{fn.device:04X}\n"
                + f"PCI_SUBSYS_ID={fn.subsystem[0]:04X}:{fn.subsystem[1]:04X}\n"
                + f"PCI_SLOT_NAME={fn.address}"
            ),
        }
        for name, value in attrs.items():
            (d / name).write_text(value + "\n")
        _link(d / "subsystem", sysfs / "bus/pci")
        _link(sysfs / "bus/pci/devices" / fn.address, d)
        if fn.driver:
            drv = sysfs / "bus/pci/drivers" / fn.driver
            _link(d / "driver", drv)
            _link(drv / fn.address, d)

    def _make_node(self, accel: int) -> None:
        node = self.dev_root / "accel" / f"accel{accel}"
        node.parent.mkdir(parents=True, exist_ok=True)  # devtmpfs makes /dev/accel on demand
        _unlink(node)
        if self.device_node_kind == "char":
            os.mknod(node, stat.S_IFCHR | 0o660, os.makedev(ACCEL_MAJOR, accel))
            os.chmod(node, 0o660)  # mknod honours the umask
        else:
            node.touch(mode=0o660)

    def _write_soc(self, soc: _Soc, written: set[str]) -> None:
        self._write_fn(soc.fn, written)
        if soc.bound:
            self._write_driver_state(soc)
            self._write_accel(soc.fn, soc.accel)

    def _write_driver_state(self, soc: _Soc) -> None:
        """What a qaic probe adds besides the accel device: dbc states and RAS counters."""
        soc.dbc_states = ["0"] * self.dbcs
        soc.ras = dict.fromkeys(RAS_COUNTERS, 0)
        if not self.written:
            return
        fn_dir = self.sysfs_root / soc.fn.relpath
        if self.ras:
            for name, value in soc.ras.items():
                (fn_dir / name).write_text(f"{value}\n")

    def _write_accel(self, fn: _Fn, accel: int) -> None:
        sysfs = self.sysfs_root
        fn_dir = sysfs / fn.relpath
        a = fn_dir / "accel" / f"accel{accel}"
        a.mkdir(parents=True)
        (a / "dev").write_text(f"{ACCEL_MAJOR}:{accel}\n")
        uevent = f"MAJOR={ACCEL_MAJOR}\nMINOR={accel}\nDEVNAME=accel/accel{accel}\n"
        (a / "uevent").write_text(uevent)
        soc = self._socs.get(fn.address)
        if soc is not None:
            for i, state in enumerate(soc.dbc_states):
                (a / f"dbc{i}_state").write_text(f"{state}\n")
        (sysfs / "class/accel").mkdir(parents=True, exist_ok=True)
        _link(a / "device", fn_dir)
        _link(a / "subsystem", sysfs / "class/accel")
        _link(sysfs / "class/accel" / f"accel{accel}", a)
        _link(sysfs / "dev/char" / f"{ACCEL_MAJOR}:{accel}", a)
        self._make_node(accel)

    def _state(self) -> dict[str, Any]:
        devices = []
        for soc in sorted(self._socs.values(), key=lambda s: s.fn.address):
            dram, nsp = SKU_RESOURCES[soc.sku]
            devices.append(
                {
                    "pci_address": soc.fn.address,
                    "device_id": f"{soc.fn.device:04x}",
                    "accel": soc.accel,
                    # the runtime still lists an unbound function (QIDs count every one)
                    "status": soc.status if soc.bound else "Error",
                    "sku_type": SKU_TYPE_TEXT[soc.sku],
                    "dram_total_mb": dram,
                    "nsp_total": nsp,
                }
            )
        return {
            "mode": self.qaic_util_mode,
            "qid_order": self.qaic_util_qid_order,
            "devices": devices,
        }

    def _save_state(self) -> None:
        if self.written:
            _write_text_atomic(self.state_path, json.dumps(self._state(), indent=1) + "\n")

    # ----- faults and hot-plug ----------------------------------------------------------

    def remove_device_node(self, pci: str) -> None:
        _unlink(self.device_node(pci))

    def restore_device_node(self, pci: str) -> None:
        self._make_node(self._get(pci).accel)

    def set_status(self, pci: str, status: str) -> None:
        """What the fake qaic-util prints as Status (Ready / Error / Initializing)."""
        self._get(pci).status = status
        self._save_state()

    def set_qaic_util_mode(self, mode: str | None) -> None:
        """Make the fake qaic-util hang, print garbage or crash, or fail as a binary whose
        shared library is missing does ("nolib": the loader's message, exit 127);
        env FAKE_QAIC_UTIL_MODE wins."""
        if mode not in (None, "hang", "garbage", "crash", "nolib"):
            raise ValueError(f"unknown qaic-util mode {mode!r}")
        self.qaic_util_mode = mode
        self._save_state()

    def set_qaic_util_qid_order(self, order: Sequence[str] | None) -> None:
        """Make the fake qaic-util number SoCs in this PCI-address order (unlisted ones follow
        in PCI order), as a runtime that sorts differently from us would; None: PCI order."""
        self.qaic_util_qid_order = list(order) if order is not None else None
        self._save_state()

    def set_dbc_state(self, pci: str, dbc: int, state: int | str) -> None:
        """Write `accelN/dbc<dbc>_state` (0 idle .. 5 after-power-up; a str writes it verbatim,
        for garbage). The driver also sends a KOBJ_CHANGE uevent with DBC_ID/DBC_STATE."""
        soc = self._get(pci)
        if not 0 <= dbc < len(soc.dbc_states):
            raise ValueError(f"{pci} has {len(soc.dbc_states)} dbc state files, not dbc{dbc}")
        soc.dbc_states[dbc] = str(state)
        if self.written and soc.bound:
            path = self._accel_dir(soc) / f"dbc{dbc}_state"
            _write_text_atomic(path, f"{state}\n")

    def ras_counts(self, pci: str) -> dict[str, int]:
        return dict(self._get(pci).ras)

    def bump_ras_count(self, pci: str, counter: str, by: int = 1) -> int:
        """Add `by` to a RAS counter file on the PCI function (as the driver's RAS handler
        does); returns the new value."""
        if counter not in RAS_COUNTERS:
            raise ValueError(f"unknown RAS counter {counter!r}; one of {RAS_COUNTERS}")
        soc = self._get(pci)
        soc.ras[counter] += by
        if self.written and soc.bound and self.ras:
            path = self.sysfs_root / soc.fn.relpath / counter
            _write_text_atomic(path, f"{soc.ras[counter]}\n")
        return soc.ras[counter]

    def bump_ue_count(self, pci: str, by: int = 1) -> int:
        """An uncorrectable (fatal) RAS error: the driver counts it and resets the SoC."""
        return self.bump_ras_count(pci, "ue_count", by)

    def set_ras_file(self, pci: str, counter: str, text: str) -> None:
        """Write a RAS counter file verbatim (garbage, a saturated -1, ...)."""
        if counter not in RAS_COUNTERS:
            raise ValueError(f"unknown RAS counter {counter!r}")
        _write_text_atomic(self.sysfs_root / self._get(pci).fn.relpath / counter, text)

    def _accel_dir(self, soc: _Soc) -> Path:
        return self.sysfs_root / soc.fn.relpath / "accel" / f"accel{soc.accel}"

    def _drop_accel(self, soc: _Soc) -> None:
        sysfs = self.sysfs_root
        _unlink(sysfs / "class/accel" / f"accel{soc.accel}")
        _unlink(sysfs / "dev/char" / f"{ACCEL_MAJOR}:{soc.accel}")
        _unlink(self.dev_root / "accel" / f"accel{soc.accel}")
        shutil.rmtree(sysfs / soc.fn.relpath / "accel", ignore_errors=True)

    def unbind_driver(self, pci: str) -> None:
        """`echo <BDF> > /sys/bus/pci/drivers/qaic/unbind`: the accel device, its node, the
        dbc state and RAS files and the driver links go; the PCI function stays."""
        soc = self._get(pci)
        if not soc.bound:
            return
        soc.bound = False
        if self.written:
            sysfs = self.sysfs_root
            fn_dir = sysfs / soc.fn.relpath
            self._drop_accel(soc)
            for name in RAS_COUNTERS:
                _unlink(fn_dir / name)
            _unlink(fn_dir / "driver")
            _unlink(sysfs / "bus/pci/drivers/qaic" / pci)
            uevent = fn_dir / "uevent"
            lines = uevent.read_text().splitlines()
            uevent.write_text("\n".join(x for x in lines if not x.startswith("DRIVER=")) + "\n")
        self._accels.discard(soc.accel)
        soc.accel = -1
        self._save_state()

    def bind_driver(self, pci: str) -> None:
        """`echo <BDF> > /sys/bus/pci/drivers/qaic/bind`: a fresh probe, so a new accel number
        (the lowest free), RAS counters from 0 and every sub-system idle."""
        soc = self._get(pci)
        if soc.bound:
            return
        soc.bound = True
        soc.accel = self._alloc_accel()
        if self.written:
            sysfs = self.sysfs_root
            fn_dir = sysfs / soc.fn.relpath
            drv = sysfs / "bus/pci/drivers/qaic"
            for attr in ("bind", "unbind", "new_id", "remove_id", "uevent"):
                (drv / attr).parent.mkdir(parents=True, exist_ok=True)
                (drv / attr).touch()
            _link(fn_dir / "driver", drv)
            _link(drv / pci, fn_dir)
            uevent = fn_dir / "uevent"
            uevent.write_text(f"DRIVER=qaic\n{uevent.read_text()}")
        self._write_driver_state(soc)
        if self.written:
            self._write_accel(soc.fn, soc.accel)
        self._save_state()

    def unload_driver(self) -> None:
        """`modprobe -r qaic`: every SoC unbound, the driver directory gone; with no other accel
        driver left, sys/class/accel and /dev/accel go too (a node before the driver loads)."""
        for pci in sorted(self._socs):
            self.unbind_driver(pci)
        if self.written:
            shutil.rmtree(self.sysfs_root / "bus/pci/drivers/qaic", ignore_errors=True)
            for d in (self.sysfs_root / "class/accel", self.dev_root / "accel"):
                with contextlib.suppress(OSError):  # not empty: another driver's devices
                    d.rmdir()

    def load_driver(self) -> None:
        """`modprobe qaic`: probe every SoC in PCI-address order."""
        for pci in sorted(self._socs):
            self.bind_driver(pci)

    def reload_driver(self, probe_order: Sequence[str] = ()) -> None:
        """`modprobe -r qaic; modprobe qaic`, the SoCs in `probe_order` probed first (the
        kernel probes asynchronously): each takes the lowest free accel minor, so SoCs can
        swap device nodes."""
        self.unload_driver()
        for pci in [*probe_order, *sorted(p for p in self._socs if p not in probe_order)]:
            self.bind_driver(pci)

    def remove_soc(self, pci: str) -> None:
        """Hot-remove: everything the kernel drops when the PCI function goes away."""
        soc = self._get(pci)
        sysfs = self.sysfs_root
        if self.written:
            if soc.bound:
                _unlink(sysfs / "class/accel" / f"accel{soc.accel}")
                _unlink(sysfs / "dev/char" / f"{ACCEL_MAJOR}:{soc.accel}")
            _unlink(sysfs / "bus/pci/devices" / pci)
            _unlink(sysfs / "bus/pci/drivers/qaic" / pci)
            fn_dir = sysfs / soc.fn.relpath
            _unlink(fn_dir / "driver")
            shutil.rmtree(fn_dir, ignore_errors=True)
            if soc.bound:
                _unlink(self.dev_root / "accel" / f"accel{soc.accel}")
        del self._socs[pci]
        self._accels.discard(soc.accel)
        self._save_state()

    def add_card(self, spec: CardSpec) -> list[FakeSoc]:
        """Hot-add a card; its SoCs take the lowest free accel numbers, like the kernel."""
        planned = self._plan_card(spec)
        for soc in planned:
            soc.accel = self._alloc_accel()
        if self.written:
            written: set[str] = set()
            for soc in planned:
                self._write_soc(soc, written)
            self._save_state()
        new = {s.fn.address for s in planned}
        return [s for s in self.socs if s.pci_address in new]


# The fake qaic-util: stdlib only, so it runs in any image with a python3.
QAIC_UTIL_SCRIPT = r'''#!/usr/bin/env python3
"""Fake qaic-util for the simulated node: prints `qaic-util -q` from the state file beside it.

Env FAKE_QAIC_UTIL_MODE=hang|garbage|crash|nolib (or "mode" in the state file) injects
faults; "qid_order" in the state file numbers the SoCs in another order.
"""
import json
import os
import sys
import time

STATE = os.path.join(os.path.dirname(os.path.realpath(__file__)), "qaic-util-state.json")


def block(qid, dev):
    ready = dev["status"] == "Ready"
    lines = [
        "QID %d" % qid,
        "\tStatus:%s" % dev["status"],
        "\tPCI Address:%s" % dev["pci_address"],
        "\tPCI Info:Processing accelerators Qualcomm Device %s" % dev["device_id"],
        "\tMax Link Speed:16GT/s",
        "\tMax Link Width:8",
        "\tDev Link:/dev/accel/accel%d " % dev["accel"],
    ]
    if ready:
        lines += [
            "\tHW Version:0.2.0.0",
            "\tFW Version:1.16.2",
            "\tDram Total:%d MB" % dev["dram_total_mb"],
            "\tDram Free:%d MB" % dev["dram_total_mb"],
            "\tNsp Total:%d" % dev["nsp_total"],
            "\tNsp Free:%d" % dev["nsp_total"],
            "\tNSP Defective PG Mask: 0x0",
            "\tSku Type:%s" % dev["sku_type"],
        ]
    return "\n".join(lines) + "\n"


def main(argv):
    query, only = False, None
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "-q":
            query = True
        elif a == "-d" and args and args[0].isdigit():
            only = int(args.pop(0))
        else:
            sys.stderr.write("usage: qaic-util [-d QID] -q\n")
            return 2
    if not query:
        sys.stderr.write("usage: qaic-util [-d QID] -q\n")
        return 2
    try:
        with open(STATE) as f:
            state = json.load(f)
    except (OSError, ValueError) as exc:
        sys.stderr.write("qaic-util: cannot read %s: %s\n" % (STATE, exc))
        return 1
    mode = os.environ.get("FAKE_QAIC_UTIL_MODE") or state.get("mode") or ""
    delay = os.environ.get("FAKE_QAIC_UTIL_DELAY")
    if delay:
        time.sleep(float(delay))
    if mode == "hang":
        while True:
            time.sleep(3600)
    if mode == "nolib":
        sys.stderr.write(
            "%s: error while loading shared libraries: libpci.so.3: cannot open shared "
            "object file: No such file or directory\n" % sys.argv[0]
        )
        return 127
    if mode == "garbage":
        sys.stdout.buffer.write(b"\x00\xffqaic: \x1b[31mgarbage QID x\n\tStatus\n:::\n\xfe\n")
        return 0
    devices = sorted(state["devices"], key=lambda d: d["pci_address"])
    order = state.get("qid_order")
    if order:
        rank = {pci: i for i, pci in enumerate(order)}
        devices.sort(key=lambda d: (rank.get(d["pci_address"], len(rank)), d["pci_address"]))
    if only is not None and not 0 <= only < len(devices):
        sys.stderr.write("qaic-util: no device with QID %d\n" % only)
        return 1
    out = [block(q, d) for q, d in enumerate(devices) if only is None or q == only]
    if mode == "crash":
        sys.stdout.write(out[0][:40] if out else "")
        sys.stdout.flush()
        sys.stderr.write("Segmentation fault (core dumped)\n")
        return 139
    sys.stdout.write("".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def runtime_decimal_order(addresses: Sequence[str]) -> list[str]:
    """PCI addresses in the order the open-source QAic runtime numbers QIDs: libpci's devices
    keyed by `"%04d%02d%02d%02d" % (domain, bus, dev, fn)` in a std::map, i.e. DECIMAL fields
    compared as text, which departs from PCI-address order once a bus number reaches 0x64
    (quic/software-kit-for-qualcomm-cloud-ai-100, lib/runtime-platform/src/os/linux/QOsal.cpp,
    enumAicDevices). For tests of the QID cross-check."""

    def key(pci: str) -> str:
        dom, bus, rest = pci.split(":")
        dev, fn = rest.split(".")
        return f"{int(dom, 16):04d}{int(bus, 16):02d}{int(dev, 16):02d}{int(fn, 16):02d}"

    return sorted(addresses, key=key)


# ----- CLI --------------------------------------------------------------------------------


def _specs(ultra: int, std: int, pro: int) -> Iterator[CardSpec]:
    """The demo's node: cards alternate between NUMA nodes 0 and 1."""
    kinds = [Sku.ULTRA] * ultra + [Sku.STANDARD] * std + [Sku.PRO] * pro
    for i, sku in enumerate(kinds):
        yield CardSpec(sku, numa_node=i % 2)


#: The project demo's node: 2 Ultra, 1 Standard, 1 Pro over NUMA nodes 0 and 1.
DEMO_CARDS: tuple[CardSpec, ...] = tuple(_specs(2, 1, 1))


def summary(node: FakeNode) -> dict[str, Any]:
    return {
        "root": str(node.root),
        "sysfs_root": str(node.sysfs_root),
        "dev_root": str(node.dev_root),
        "qaic_util": str(node.qaic_util_path),
        "device_nodes": node.device_node_kind,
        "foreign": node.foreign_pci,
        "socs": [
            {
                "pci": s.pci_address,
                "accel": s.accel_index,
                "qid": s.qid,
                "card": s.card_index,
                "card_id": s.card_id,
                "sku": s.sku.value,
                "numa": s.numa_node,
            }
            for s in node.socs
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m qaic_device_plugin.sim.node",
        description="Write a fake Cloud AI 100 node (sysfs, /dev/accel, qaic-util) under --root.",
    )
    p.add_argument("--root", type=Path, required=True, help="directory to write into (fresh)")
    p.add_argument("--ultra", type=int, default=2, metavar="N", help="Ultra cards (4 SoCs each)")
    p.add_argument("--std", type=int, default=1, metavar="N", help="Standard cards")
    p.add_argument("--pro", type=int, default=1, metavar="N", help="Pro cards")
    p.add_argument("--no-foreign", action="store_true", help="leave out the Intel NPU at accel0")
    p.add_argument("--device-nodes", choices=("auto", "char", "file"), default="auto")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    args = p.parse_args(argv)
    if min(args.ultra, args.std, args.pro) < 0:
        p.error("card counts must not be negative")
    try:
        node = FakeNode(
            args.root,
            list(_specs(args.ultra, args.std, args.pro)),
            foreign_accel=not args.no_foreign,
            device_nodes=args.device_nodes,
        )
        node.write()
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    info = summary(node)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"sysfs: {info['sysfs_root']}  dev: {info['dev_root']}  qaic-util: {info['qaic_util']}")
    print(f"device nodes: {info['device_nodes']}  foreign accel0: {info['foreign'] or 'none'}")
    print(f"{'pci':<14} {'accel':>5} {'qid':>3} {'card':>4} {'card_id':<14} {'sku':<6} numa")
    for s in info["socs"]:
        print(
            f"{s['pci']:<14} {s['accel']:>5} {s['qid']:>3} {s['card']:>4} "
            f"{s['card_id']:<14} {s['sku']:<6} {s['numa']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
