"""The node's SoCs as they are now: discovery + SKU + health, remembered across resets.

A SoC whose accel entry vanishes while its PCI function stays (a reset, a driver rebind) is
kept and reported Unhealthy, so kubelet keeps counting it and sees it recover; a SoC whose
PCI function is gone too was hot-removed and is dropped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .cards import check_qids, guessed_cards, resolve_cards
from .discovery import discover
from .health import (
    Finding,
    RasTracker,
    Unreadable,
    check_dbc_states,
    check_device_node,
    check_qaic_util,
    check_sysfs,
    read_ras_counts,
)
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


DEFAULT_UE_COOLDOWN_SECONDS = 300.0


class Inventory:
    def __init__(
        self,
        sysfs_root: Path,
        dev_root: Path,
        overrides: Mapping[str, Sku],
        *,
        ue_cooldown_seconds: float = DEFAULT_UE_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self.overrides = dict(overrides)
        self.ras = RasTracker(ue_cooldown_seconds, clock)
        self._known: dict[str, Soc] = {}
        self._skus: dict[str, SkuDecision] = {}
        # qaic-util's QIDs and the count of ours they were taken against: kept through brief
        # qaic-util outages while our count is unchanged, so QIDs do not flip between polls
        self._util_qids: tuple[dict[str, int], dict[str, int]] = ({}, {})
        self._said_guessed: dict[str, list[str]] = {}
        self._said_mismatch: dict[str, tuple[int, int]] = {}

    def _pci_present(self, pci: str) -> bool:
        return os.path.lexists(self.sysfs_root / "bus" / "pci" / "devices" / pci)

    def scan(self, qaic_util: Sequence[QaicUtilEntry] | None) -> NodeState:
        found = discover(self.sysfs_root)
        present = {s.pci_address: s for s in found.socs}
        for pci in list(self._known):
            if pci not in present and not self._pci_present(pci):
                log.info("SoC removed", extra={"event": "soc_removed", "pci": pci})
                del self._known[pci]
                self._skus.pop(pci, None)
                self.ras.forget(pci)
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
        socs = self._runtime_qids(self._cards(socs), qaic_util)

        by_pci = {e.pci_address: e for e in qaic_util} if qaic_util is not None else None
        states: list[SocState] = []
        unreadable: list[Unreadable] = []
        for soc in socs:
            findings: list[Finding] = []
            for evidence in self._signals(soc, soc.pci_address in present, by_pci):
                if isinstance(evidence, Finding):
                    findings.append(evidence)
                elif isinstance(evidence, Unreadable):
                    unreadable.append(evidence)
            states.append(SocState(soc, self._skus[soc.pci_address], tuple(findings)))
        return NodeState(tuple(states), found, tuple(unreadable))

    def _signals(
        self, soc: Soc, accel_present: bool, qaic_util: Mapping[str, QaicUtilEntry] | None
    ) -> list[Finding | Unreadable | None]:
        """Every signal for one SoC; each is read even when another already condemns the SoC,
        so the RAS baseline stays current and the log names every reason."""
        ras = read_ras_counts(self.sysfs_root, soc.pci_address)
        return [
            check_sysfs(self.sysfs_root, soc, accel_present=accel_present),
            check_device_node(self.dev_root, soc),
            check_dbc_states(self.sysfs_root, soc) if accel_present else None,
            ras if isinstance(ras, Unreadable) else None,
            self.ras.observe(soc.pci_address, None if isinstance(ras, Unreadable) else ras),
            check_qaic_util(soc, qaic_util),
        ]

    def _cards(self, socs: Sequence[Soc]) -> list[Soc]:
        """Card groupings the SKU evidence proves; the rest stay guesses, logged on change."""
        cards = resolve_cards(socs, self._skus)
        out = [
            replace(
                s, card_id=cards[s.pci_address].card_id, card_evidence=cards[s.pci_address].evidence
            )
            for s in socs
        ]
        guessed = guessed_cards(out)
        if guessed != self._said_guessed:
            self._said_guessed = guessed
            if guessed:
                log.warning(
                    "SoCs grouped into cards by a shared PCIe switch only (no firmware evidence):"
                    " not offered as multi-SoC SKUs, and QAIC_MULTI_SOC_POLICY=require will not"
                    " vouch for them; make qaic-util available or set QAIC_SKU_OVERRIDES",
                    extra={"event": "card_guessed", "cards": guessed},
                )
        return out

    def _runtime_qids(
        self, socs: Sequence[Soc], qaic_util: Sequence[QaicUtilEntry] | None
    ) -> list[Soc]:
        """The QIDs the runtime uses: qaic-util's map where it lists a SoC, else our count."""
        ours = {s.pci_address: s.qid for s in socs}
        if qaic_util is not None:
            check = check_qids(socs, qaic_util)
            self._util_qids = (ours, check.theirs)
        elif self._util_qids[0] != ours:
            self._util_qids = ({}, {})  # the node changed since qaic-util last spoke
        theirs = self._util_qids[1]
        mismatched = {p: (ours[p], q) for p, q in sorted(theirs.items()) if ours[p] != q}
        if mismatched != self._said_mismatch:
            self._said_mismatch = mismatched
            if mismatched:
                log.warning(
                    "our QID count differs from qaic-util's map; QAIC_VISIBLE_DEVICES uses"
                    " qaic-util's",
                    extra={
                        "event": "qid_mismatch",
                        "ours": {p: q[0] for p, q in mismatched.items()},
                        "qaic_util": {p: q[1] for p, q in mismatched.items()},
                    },
                )
            else:
                log.info("QIDs agree with qaic-util", extra={"event": "qid_match"})
        return [replace(s, qid=theirs.get(s.pci_address, s.qid)) for s in socs]
    def learned_skus(self) -> dict[str, SkuDecision]:
        """SKUs qaic-util named for SoCs present now (worth keeping across a restart; overrides
        come from settings and topology is recomputed)."""
        return {
            p: d
            for p, d in self._skus.items()
            if p in self._known and d.source is SkuSource.QAIC_UTIL
        }

    def restore_skus(self, learned: Mapping[str, SkuDecision]) -> None:
        """SKUs learned before a restart: kept, like any fact, until qaic-util or an override
        says otherwise (so a restart while qaic-util cannot answer does not flip resources)."""
        for pci, decision in learned.items():
            if pci not in self._skus:
                self._skus[pci] = decision
                _log_sku(pci, decision, restored=True)

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
                _log_sku(pci, decision)
            self._skus[pci] = decision


def log_health_changes(previous: NodeState | None, state: NodeState) -> None:
    """One line per SoC whose health changed (or that is new), with the reasons: both modes
    (device plugin and DRA) report health the same way."""
    before = previous.by_pci() if previous else {}
    for s in state.socs:
        old = before.get(s.soc.pci_address)
        if old is None or old.healthy != s.healthy:
            log.info(
                "SoC healthy" if s.healthy else "SoC unhealthy",
                extra={
                    "event": "health",
                    "pci": s.soc.pci_address,
                    "accel": s.soc.accel_name,
                    "healthy": s.healthy,
                    "reasons": [f"{f.signal}: {f.detail}" for f in s.findings],
                },
            )


def _log_sku(pci: str, decision: SkuDecision, *, restored: bool = False) -> None:
    extra: dict[str, object] = {
        "event": "sku", "pci": pci, "sku": decision.sku.value, "source": decision.source.value,
    }
    if restored:
        extra["restored"] = True
    log.info("SKU decided", extra=extra)
