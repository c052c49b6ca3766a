"""Which SoCs really share a card, and which QID the runtime gives each: evidence over guesses.

Sysfs shows PCIe switches, not cards: an Ultra card's on-card switch and a server board's
switch with two to four single-SoC cards below it look the same. Only firmware (qaic-util's
`Sku Type`) or the operator (QAIC_SKU_OVERRIDES) can say which it is, so a grouping by switch
alone stays a guess, carried as data (`Soc.card_evidence`) that QAIC_MULTI_SOC_POLICY=require
refuses to vouch for.

QIDs are the runtime's numbering, and qaic-util prints it (`QID n` + `PCI Address:`); our own
count (every qaic PCI function in PCI-address order) is only the fallback, so when the two
disagree qaic-util's map is the one QAIC_VISIBLE_DEVICES must carry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .model import CardEvidence, QaicUtilEntry, SkuDecision, SkuSource, Soc
from .sku import MULTI_SOC_SKUS

_EVIDENCE = {
    SkuSource.QAIC_UTIL: CardEvidence.QAIC_UTIL,
    SkuSource.SIBLING: CardEvidence.QAIC_UTIL,  # an on-card sibling's firmware said so
    SkuSource.OVERRIDE: CardEvidence.OVERRIDE,
}


@dataclass(frozen=True, slots=True)
class CardDecision:
    card_id: str
    evidence: CardEvidence


def resolve_cards(socs: Sequence[Soc], skus: Mapping[str, SkuDecision]) -> dict[str, CardDecision]:
    """Each SoC's card, keyed by PCI address, from discovery's candidate and its SKU evidence.

    A SoC whose SKU firmware or the operator names as a one-SoC SKU is its own card, whatever
    the PCI tree says; a multi-SoC SKU keeps the switch grouping, now proven. A SoC with only
    a guessed SKU keeps the grouping as a guess (so preferred allocation still packs jobs
    there, which costs nothing if it is wrong), never as a fact.
    """
    out: dict[str, CardDecision] = {}
    for soc in socs:
        pci = soc.pci_address
        decision = skus.get(pci)
        if soc.card_id == pci:
            out[pci] = CardDecision(pci, CardEvidence.ALONE)
        elif decision is None or decision.source is SkuSource.TOPOLOGY:
            out[pci] = CardDecision(soc.card_id, CardEvidence.TOPOLOGY)
        elif decision.sku in MULTI_SOC_SKUS:
            out[pci] = CardDecision(soc.card_id, _EVIDENCE[decision.source])
        else:
            out[pci] = CardDecision(pci, _EVIDENCE[decision.source])
    return out


def guessed_cards(socs: Sequence[Soc]) -> dict[str, list[str]]:
    """Card id -> its SoCs, for the cards that only PCIe topology groups (for the log)."""
    groups: dict[str, list[str]] = {}
    for soc in sorted(socs, key=lambda s: s.pci_address):
        if not soc.card_certain:
            groups.setdefault(soc.card_id, []).append(soc.pci_address)
    return groups


@dataclass(frozen=True, slots=True)
class QidCheck:
    """Our QIDs against qaic-util's: the map to use, and where they differ."""

    qids: dict[str, int]  # PCI address -> QID for QAIC_VISIBLE_DEVICES
    ours: dict[str, int]  # what discovery counted
    theirs: dict[str, int]  # what qaic-util printed, for the SoCs we serve

    @property
    def mismatched(self) -> dict[str, tuple[int, int]]:
        """PCI address -> (our QID, qaic-util's QID), only where they differ."""
        return {
            pci: (self.ours[pci], qid)
            for pci, qid in sorted(self.theirs.items())
            if self.ours.get(pci) != qid
        }


def check_qids(socs: Sequence[Soc], entries: Sequence[QaicUtilEntry]) -> QidCheck:
    """qaic-util's QID wins for every SoC it lists; a SoC it does not list keeps ours.

    qaic-util numbers SoCs the way the runtime in the pod will (the same library does it), so
    where it has spoken, a mismatch means our count is what is wrong (a device id the runtime
    does not count, or a different sort of PCI addresses).
    """
    listed = {e.pci_address.strip().lower(): e.qid for e in entries}
    ours = {s.pci_address: s.qid for s in socs}
    theirs = {pci: listed[pci] for pci in ours if pci in listed}
    return QidCheck({**ours, **theirs}, ours, theirs)
