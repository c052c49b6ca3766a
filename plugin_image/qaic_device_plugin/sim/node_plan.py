"""The fake node as planned: its cards, SoCs and accel numbers, before and after it is written
(sim/node_files.py writes it; sim/node.py adds the events tests inject)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ..qaic.model import Sku
from .fake_qaic_util import STATE_NAME
from .pci_tree import (
    _BUSES_PER_HOST,
    _HOST_BUSES,
    BRIDGE_CLASS,
    CARD_SWITCH_ID,
    DBCS_PER_SOC,
    FOREIGN_ID,
    FOREIGN_PCI,
    MULTI_SOC_SKUS,
    PLATFORM_SWITCH_ID,
    QAIC_CLASS,
    QAIC_DEVICE,
    QAIC_DEVICE_080,
    QAIC_VENDOR,
    ROOT_PORT_ID,
    SOC_SUBSYSTEM,
    SOCS_PER_MULTI_CARD,
    CardSpec,
    DeviceNodes,
    FakeSoc,
    _Attach,
    _bdf,
    _Fn,
    _Host,
    _Soc,
)


class NodePlan:
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
