"""What the plugin knows about one node's Cloud AI 100 SoCs.

Plain data, no I/O and no gRPC: discovery fills it from sysfs, SKU resolution from
qaic-util, and the kubelet side only ever sees the generic view the app builds from it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Sku(enum.StrEnum):
    """A card's SKU; the value is the resource-name suffix (`qualcomm.com/qaic-<value>`)."""

    STANDARD = "std"
    PRO = "pro"
    ULTRA = "ultra"
    LITE = "lite"
    M2 = "m2"
    AUTO = "auto"
    ULTRA_PLUS = "ultra-plus"
    AI080 = "080"
    ULTRA_080 = "ultra-080"


class SkuSource(enum.StrEnum):
    """Which evidence decided a SoC's SKU (logged and an NFD label, so operators can tell a
    guess from a fact). Declared strongest first: `weakest()` relies on that order."""

    QAIC_UTIL = "qaic-util"  # the SoC's own firmware answer
    OVERRIDE = "override"  # QAIC_SKU_OVERRIDES
    SIBLING = "sibling"  # the firmware answer of another SoC behind the same on-card switch
    TOPOLOGY = "topology"  # a guess: no firmware answer and no override

    @classmethod
    def weakest(cls, sources: Iterable[SkuSource]) -> SkuSource | None:
        order = list(cls)
        found = [order.index(s) for s in sources]
        return order[max(found)] if found else None


class CardEvidence(enum.StrEnum):
    """Why a SoC's card grouping is believed. Only firmware (qaic-util) or the operator can
    say that SoCs behind one PCIe switch are one multi-SoC card: four single-SoC cards behind
    a server-board switch look exactly like an Ultra card in sysfs."""

    ALONE = "alone"  # no other SoC behind its switch: its own card, nothing to prove
    QAIC_UTIL = "qaic-util"  # firmware Sku Type (its own or an on-card sibling's)
    OVERRIDE = "override"  # QAIC_SKU_OVERRIDES names the SKU
    TOPOLOGY = "topology"  # grouped by a shared PCIe switch only: a guess

    @property
    def certain(self) -> bool:
        return self is not CardEvidence.TOPOLOGY


@dataclass(frozen=True, slots=True)
class Soc:
    """One SoC: one PCI function, one accel device, one schedulable unit."""

    pci_address: str  # "0000:35:00.0", the stable identity (survives reboots and restarts)
    accel_index: int  # N of /dev/accel/accelN; global across drivers, never the QID
    pci_device: int  # PCI device id: 0xa100 (AIC100), 0xa080 (AIC080), 0xa110 (AIC200)
    numa_node: int | None  # None when sysfs says -1
    card_id: str  # PCI address of the on-card switch upstream port, or the SoC's own
    qid: int  # runtime QID: qaic-util's when known, else our PCI-address-order count
    card_evidence: CardEvidence = CardEvidence.ALONE  # discovery: ALONE or TOPOLOGY

    @property
    def card_certain(self) -> bool:
        """May the plugin vouch that this SoC's card grouping is real (QAIC_MULTI_SOC_POLICY)?"""
        return self.card_evidence.certain

    @property
    def accel_name(self) -> str:
        return f"accel{self.accel_index}"

    @property
    def dev_relpath(self) -> str:
        """Device node path relative to the /dev root."""
        return f"accel/accel{self.accel_index}"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A sysfs entry discovery passed over, and why (logged and counted, never fatal)."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Discovery:
    socs: tuple[Soc, ...]
    skipped: tuple[Skipped, ...] = ()
    foreign: tuple[str, ...] = ()  # accel devices of other drivers (e.g. Intel NPU), left alone


@dataclass(frozen=True, slots=True)
class QaicUtilEntry:
    """One `QID n` block of `qaic-util -q`."""

    qid: int
    pci_address: str
    status: str  # Initializing | Ready | Error | ...
    sku_type: str | None = None  # raw `Sku Type:` text; only present when Ready
    dev_link: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == "Ready"


@dataclass(frozen=True, slots=True)
class SkuDecision:
    sku: Sku
    source: SkuSource
