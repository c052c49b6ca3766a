"""The node's SoCs as they are now: discovery + SKU + health, remembered across resets.

A SoC whose accel entry vanishes while its PCI function stays (a reset, a driver rebind) is
kept and reported Unhealthy, so kubelet keeps counting it and sees it recover; a SoC whose
PCI function is gone too was hot-removed and is dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .discovery import discover
from .health import Finding, Signal, Unreadable, check_device_node
from .model import Discovery, QaicUtilEntry, Sku, SkuDecision, SkuSource, Soc
from .sku import resolve_skus

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SocState:
    soc: Soc
    sku: SkuDecision
    findings: tuple[Finding, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.findings


@dataclass(frozen=True, slots=True)
class NodeState:
    socs: tuple[SocState, ...]
    discovery: Discovery
    unreadable: tuple[Unreadable, ...] = ()

    def by_pci(self) -> dict[str, SocState]:
        return {s.soc.pci_address: s for s in self.socs}


class Inventory:
    def __init__(self, sysfs_root: Path, dev_root: Path, overrides: Mapping[str, Sku]) -> None:
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self.overrides = dict(overrides)
        self._known: dict[str, Soc] = {}
        self._skus: dict[str, SkuDecision] = {}

    def _pci_present(self, pci: str) -> bool:
        return os.path.lexists(self.sysfs_root / "bus" / "pci" / "devices" / pci)

    def scan(self, qaic_util: Sequence[QaicUtilEntry] | None) -> NodeState:
        found = discover(self.sysfs_root)
        present = {s.pci_address: s for s in found.socs}
        gone: dict[str, Finding] = {}
        for pci, soc in list(self._known.items()):
            if pci in present:
                continue
            if self._pci_present(pci):
                gone[pci] = Finding(Signal.SYSFS, f"{soc.accel_name} left sysfs (reset or unbound)")
            else:
                log.info("SoC removed", extra={"event": "soc_removed", "pci": pci})
                del self._known[pci]
                self._skus.pop(pci, None)
        for pci, soc in present.items():
            if pci not in self._known:
                log.info(
                    "SoC found",
                    extra={
                        "event": "soc_found",
                        "pci": pci,
                        "accel": soc.accel_name,
                        "qid": soc.qid,
                        "card": soc.card_id,
                        "numa": soc.numa_node,
                    },
                )
            self._known[pci] = soc
        socs = [self._known[p] for p in sorted(self._known)]
        self._decide_skus(socs, qaic_util)

        states: list[SocState] = []
        unreadable: list[Unreadable] = []
        for soc in socs:
            findings: list[Finding] = []
            if soc.pci_address in gone:
                findings.append(gone[soc.pci_address])
            node = check_device_node(self.dev_root, soc)
            if isinstance(node, Finding):
                findings.append(node)
            elif isinstance(node, Unreadable):
                unreadable.append(node)
            states.append(SocState(soc, self._skus[soc.pci_address], tuple(findings)))
        return NodeState(tuple(states), found, tuple(unreadable))

    def _decide_skus(self, socs: Sequence[Soc], qaic_util: Sequence[QaicUtilEntry] | None) -> None:
        """Decide SKUs, but never let a guess replace a fact: a SoC that qaic-util or the
        operator once named keeps that SKU while qaic-util is briefly unavailable, so its
        resource does not flip."""
        for pci, decision in resolve_skus(socs, qaic_util, self.overrides).items():
            old = self._skus.get(pci)
            if (
                old is not None
                and decision.source is SkuSource.TOPOLOGY
                and (old.source is not SkuSource.TOPOLOGY)
            ):
                continue
            if old is None or old != decision:
                log.info(
                    "SKU decided",
                    extra={
                        "event": "sku",
                        "pci": pci,
                        "sku": decision.sku.value,
                        "source": decision.source.value,
                    },
                )
            self._skus[pci] = decision
