"""Writing the fake node: sysfs as the kernel lays it out, /dev/accel nodes, the fake
qaic-util and its state file."""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Literal

from ..qaic.sku import SKU_TYPE_TEXT
from .fake_qaic_util import QAIC_UTIL_SCRIPT
from .node_plan import NodePlan
from .pci_tree import (
    ACCEL_MAJOR,
    RAS_COUNTERS,
    SKU_RESOURCES,
    _Fn,
    _link,
    _Soc,
    _unlink,
    _write_text_atomic,
)


class NodeFiles(NodePlan):
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
