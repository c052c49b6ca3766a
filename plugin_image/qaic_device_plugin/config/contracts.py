"""Constraints shared by the plugin's own settings and the Pulumi stacks that deploy it.

The stack validation (infra/) imports these instead of restating them, so a value one side
accepts is never refused by the other: PCI addresses, SKU names for overrides, resource names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..qaic.model import Sku
from ..qaic.resources import BASE, DOMAIN, resource_name

#: A PCI function address as sysfs spells it: domain (4 to 8 hex digits), bus, device, function.
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
#: SKU names as operators write them (the resource-name suffixes), in the enum's order.
SKU_NAMES: tuple[str, ...] = tuple(sku.value for sku in Sku)
#: Every extended resource of ours starts with this (`qualcomm.com/qaic`, `...-<sku>`).
RESOURCE_PREFIX = f"{DOMAIN}/{BASE}"
#: The resource names SKU mode can offer, one per SKU.
SKU_RESOURCE_NAMES: tuple[str, ...] = tuple(resource_name(sku) for sku in Sku)


def parse_sku_overrides(raw: Mapping[str, str]) -> dict[str, Sku]:
    """Normalise ``{pci address: sku}`` as the plugin reads it (case-insensitive), or raise
    ValueError naming the first bad entry."""
    out: dict[str, Sku] = {}
    for address, sku in raw.items():
        key, name = str(address).strip().lower(), str(sku).strip().lower()
        if not PCI_ADDRESS.match(key):
            raise ValueError(f"{address!r} is not a PCI address (domain:bus:device.function)")
        if name not in SKU_NAMES:
            raise ValueError(f"{sku!r} is not a SKU (accepted: {', '.join(SKU_NAMES)})")
        out[key] = Sku(name)
    return out
