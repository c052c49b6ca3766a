"""Which extended resource each SoC is offered under. Names are Qualcomm's, which pod specs use."""

from __future__ import annotations

from .model import Sku

DOMAIN = "qualcomm.com"
BASE = "qaic"
#: The container environment variable the Cloud AI runtime reads: a comma list of QIDs.
VISIBLE_DEVICES_ENV = "QAIC_VISIBLE_DEVICES"


def resource_name(sku: Sku | None) -> str:
    """`qualcomm.com/qaic` (SKU mode off) or `qualcomm.com/qaic-<sku>` (on)."""
    return f"{DOMAIN}/{BASE}" if sku is None else f"{DOMAIN}/{BASE}-{sku.value}"


REPLICA_SEP = "::"


def device_ids(pci: str, shares: int) -> list[str]:
    """A SoC's device IDs: its PCI address, or `<pci>::<n>` replicas with shares."""
    return [pci] if shares == 1 else [f"{pci}{REPLICA_SEP}{n}" for n in range(shares)]


def soc_of(device_id: str) -> str:
    """The PCI address a device ID (`<pci>` or `<pci>::<n>`) names."""
    return device_id.split(REPLICA_SEP, 1)[0]


def is_ours(name: str) -> bool:
    """Any name this plugin (or Qualcomm's Go plugin) ever advertises: `qualcomm.com/qaic*`."""
    return name.startswith(f"{DOMAIN}/{BASE}")
