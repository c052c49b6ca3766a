"""Which extended resource each SoC is offered under. Names are Qualcomm's, which pod specs use."""

from __future__ import annotations

from .model import Sku

DOMAIN = "qualcomm.com"
BASE = "qaic"


def resource_name(sku: Sku | None) -> str:
    """`qualcomm.com/qaic` (SKU mode off) or `qualcomm.com/qaic-<sku>` (on)."""
    return f"{DOMAIN}/{BASE}" if sku is None else f"{DOMAIN}/{BASE}-{sku.value}"
