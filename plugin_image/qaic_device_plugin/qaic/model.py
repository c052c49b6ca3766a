"""What the plugin knows about one node's Cloud AI 100 SoCs.

Plain data, no I/O and no gRPC: discovery fills it from sysfs, SKU resolution from
qaic-util, and the kubelet side only ever sees the generic view the app builds from it.
"""

from __future__ import annotations

import enum
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
    """Which evidence decided a SoC's SKU (logged, so operators can tell a guess from a fact)."""

    QAIC_UTIL = "qaic-util"
    OVERRIDE = "setting"
    TOPOLOGY = "topology"


@dataclass(frozen=True, slots=True)
class Soc:
    """One SoC: one PCI function, one accel device, one schedulable unit."""

    pci_address: str  # "0000:35:00.0", the stable identity (survives reboots and restarts)
    accel_index: int  # N of /dev/accel/accelN; global across drivers, never the QID
    pci_device: int  # PCI device id: 0xa100 (AIC100), 0xa080 (AIC080), 0xa110 (AIC200)
    numa_node: int | None  # None when sysfs says -1
    card_id: str  # PCI address of the on-card switch upstream port, or the SoC's own
    qid: int  # index among the node's qaic PCI functions in PCI-address order

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
