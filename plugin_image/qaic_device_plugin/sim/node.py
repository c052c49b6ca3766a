"""A fake node: a sysfs tree, /dev/accel nodes and a qaic-util, laid out like the real thing.

Tests, the demo and the container image all run the real plugin against this instead of
hardware, so the layout follows the upstream qaic driver exactly (relative symlinks as the
kernel makes them, so the tree still works when bind-mounted elsewhere). Two traps are built
in on purpose: an Intel NPU holds accel0, and qaic accel numbers are not in PCI-address
order, so code that confuses accel numbers with QIDs fails here rather than on a customer's
node.

    python -m qaic_device_plugin.sim.node_cli --root /tmp/node [--ultra 2 --std 1 --pro 1] [--json]
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..qaic.model import Sku
from .fake_qaic_util import runtime_decimal_order
from .node_files import NodeFiles
from .pci_tree import (
    ACCEL_MAJOR,
    DBCS_PER_SOC,
    DEMO_CARDS,
    RAS_COUNTERS,
    CardSpec,
    FakeSoc,
    _link,
    _Soc,
    _unlink,
    _write_text_atomic,
)

__all__ = [
    "ACCEL_MAJOR",
    "DBCS_PER_SOC",
    "DEMO_CARDS",
    "CardSpec",
    "FakeNode",
    "FakeSoc",
    "Sku",
    "runtime_decimal_order",
]


class FakeNode(NodeFiles):
    """A node with Cloud AI 100 cards under `root` (sys/, dev/, bin/qaic-util)."""

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
