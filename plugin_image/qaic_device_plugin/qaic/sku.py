"""Which SKU each SoC is, from the best evidence available.

PCI ids cannot tell Standard from Pro from Ultra (they all are 17cb:a100); only the card's
firmware can, through `qaic-util`'s `Sku Type:` line. When that is missing (tool absent,
SoC not Ready) we fall back to an on-card sibling's answer and then to a guess (Standard),
and an operator can always pin a SoC's SKU by PCI address. `cards.py` then decides which
card groupings that evidence proves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from .model import QaicUtilEntry, Sku, SkuDecision, SkuSource, Soc

log = logging.getLogger(__name__)

#: Every `Sku Type:` string the runtime prints (QUtil.cpp getSkuTypeStr); None = no SKU known.
SKU_TYPES: Mapping[str, Sku | None] = {
    "Invalid": None,
    "M.2": Sku.M2,
    "PCIe": Sku.STANDARD,
    "PCIe Pro": Sku.PRO,
    "PCIe Lite": Sku.LITE,
    "PCIe Ultra": Sku.ULTRA,
    "Auto": Sku.AUTO,
    "PCIe Ultra Plus": Sku.ULTRA_PLUS,
    "PCIe 080": Sku.AI080,
    "PCIe Ultra 080": Sku.ULTRA_080,
}

#: SKUs whose card carries several SoCs behind an on-card PCIe switch.
MULTI_SOC_SKUS: frozenset[Sku] = frozenset({Sku.ULTRA, Sku.ULTRA_PLUS, Sku.ULTRA_080})

#: The `Sku Type:` text qaic-util prints for each SKU (used by the simulated node).
SKU_TYPE_TEXT: Mapping[Sku, str] = {sku: text for text, sku in SKU_TYPES.items() if sku}


def sku_from_type(text: str | None) -> Sku | None:
    """Map a raw `Sku Type:` value; unknown strings give None so a newer runtime cannot crash us."""
    if text is None:
        return None
    text = text.strip()
    if text in SKU_TYPES:
        return SKU_TYPES[text]
    log.warning(
        "unknown qaic-util Sku Type %r",
        text,
        extra={"event": "unknown_sku_type", "sku_type": text},
    )
    return None


def parse_sku(text: str) -> Sku:
    """Parse an operator-written SKU (the resource suffix, e.g. `ultra`), case-insensitively.

    Member names (`standard`, `ultra_plus`) are accepted too, because operators write them.
    """
    norm = text.strip().lower()
    for sku in Sku:
        if norm in (sku.value, sku.name.lower(), sku.name.lower().replace("_", "-")):
            return sku
    accepted = ", ".join(sku.value for sku in Sku)
    raise ValueError(f"unknown SKU {text!r}; accepted: {accepted}")


def resolve_skus(
    socs: Sequence[Soc],
    qaic_util: Sequence[QaicUtilEntry] | None,
    overrides: Mapping[str, Sku],
) -> dict[str, SkuDecision]:
    """Decide each SoC's SKU, keyed by PCI address.

    Precedence: operator override > qaic-util for this SoC > qaic-util for another SoC behind
    the same switch saying a multi-SoC SKU (a SoC that is not Ready prints no Sku Type; an
    Ultra's on-card switch holds only its own SoCs) > the guess: Standard, for a lone SoC and
    for SoCs that only share a switch alike. A switch cannot tell an Ultra card from single-SoC
    cards behind a server-board switch, and offering four Standard cards as `qaic-ultra`
    would promise P2P on one card that does not exist; the reverse only under-sells.
    """
    norm_overrides = {pci.strip().lower(): sku for pci, sku in overrides.items()}
    util_sku: dict[str, Sku] = {}
    for entry in qaic_util or ():
        sku = sku_from_type(entry.sku_type)
        if sku is not None:
            util_sku[entry.pci_address.strip().lower()] = sku

    # per candidate card: the multi-SoC SKUs qaic-util reported for its SoCs, in PCI order
    card_skus: dict[str, list[Sku]] = {}
    for soc in sorted(socs, key=lambda s: s.pci_address):
        sku = util_sku.get(soc.pci_address)
        if sku in MULTI_SOC_SKUS and soc.card_id != soc.pci_address:
            card_skus.setdefault(soc.card_id, []).append(sku)

    decisions: dict[str, SkuDecision] = {}
    for soc in socs:
        pci = soc.pci_address
        if pci in norm_overrides:
            decisions[pci] = SkuDecision(norm_overrides[pci], SkuSource.OVERRIDE)
        elif pci in util_sku:
            decisions[pci] = SkuDecision(util_sku[pci], SkuSource.QAIC_UTIL)
        elif card_skus.get(soc.card_id):
            siblings = card_skus[soc.card_id]
            # siblings of one card should agree; if firmware disagrees, the majority wins
            best = max(set(siblings), key=lambda s: (siblings.count(s), -siblings.index(s)))
            decisions[pci] = SkuDecision(best, SkuSource.SIBLING)
        else:
            decisions[pci] = SkuDecision(Sku.STANDARD, SkuSource.TOPOLOGY)
    return decisions
