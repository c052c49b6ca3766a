"""The DeviceClasses of DRA mode: which devices each selects and which extended resource each
stands for (``extendedResourceName``, KEP-5004 DRA Extended Resource, GA in 1.37).

- ``qaic.qualcomm.com`` (every SoC) and ``<sku>.qaic.qualcomm.com`` (the SoCs of one SKU),
  as before; they now also require ``type == "soc"`` because the driver publishes whole Ultra
  cards and parts of them beside their SoCs (dra/cards.py). Devices of an older driver carry
  no ``type`` and count as SoCs, so a class update never makes a device a CEL error (an
  unknown attribute aborts the allocation, resource.k8s.io/v1 CELDeviceSelector).
- Extended resources as device-plugin mode names them, following the stack's SKU mode: SKU
  mode off, ``qaic.qualcomm.com`` stands for ``qualcomm.com/qaic``; on, each SKU class for
  ``qualcomm.com/qaic-<sku>``. A pod written for device-plugin mode (``limits:
  {qualcomm.com/qaic-ultra: 4}``) then runs unchanged on a DRA node: the scheduler makes it a
  claim for that many devices of the class (on a node whose allocatable lists the name, the
  device plugin serves it as before).
- ``ultra-card.qaic.qualcomm.com`` (one device = the 4 SoCs of one card),
  ``ultra-3soc`` and ``ultra-2soc`` (3 or 2 SoCs of one card), for claims and as the extended
  resources ``qualcomm.com/qaic-ultra-card``, ``-3soc``, ``-2soc`` in either SKU mode: names
  device-plugin mode never offers, so no node serves them twice.
"""

from __future__ import annotations

import pulumi_kubernetes as k8s

from qaic_device_plugin.config.contracts import RESOURCE_PREFIX, SKU_NAMES
from qaic_device_plugin.dra.backend import DRIVER_NAME
from qaic_device_plugin.dra.cards import PART_SIZES, SOCS_PER_CARD, TYPE_CARD, TYPE_PART, TYPE_SOC

#: The class of every SoC, named like the driver (as dra-example-driver's gpu.example.com).
ALL_SOCS_CLASS = DRIVER_NAME
_ATTRS = f'device.attributes["{DRIVER_NAME}"]'
#: Devices published without a ``type`` (drivers before whole cards) are SoCs.
SOC_SELECTOR = f'!has({_ATTRS}.type) || {_ATTRS}.type == "{TYPE_SOC}"'
#: The SKUs whose cards the driver offers whole (and in parts): those with a known SoC count.
CARD_SKUS: tuple[str, ...] = tuple(sku.value for sku in SOCS_PER_CARD)


def sku_class_name(sku: str) -> str:
    """``ultra`` -> ``ultra.qaic.qualcomm.com`` (a DNS subdomain for every SKU name)."""
    return f"{sku}.{DRIVER_NAME}"


def driver_selector() -> str:
    return f'device.driver == "{DRIVER_NAME}"'


def sku_selector(sku: str) -> str:
    return f'{_ATTRS}.sku == "{sku}"'


def card_class_name(sku: str, socs: int | None = None) -> str:
    """``ultra`` -> ``ultra-card.qaic.qualcomm.com``; with 2 -> ``ultra-2soc.qaic...``."""
    return f"{sku}-{'card' if socs is None else f'{socs}soc'}.{DRIVER_NAME}"


def card_resource_name(sku: str, socs: int | None = None) -> str:
    """``qualcomm.com/qaic-ultra-card`` (whole cards) or ``qualcomm.com/qaic-ultra-2soc``."""
    return f"{RESOURCE_PREFIX}-{sku}-{'card' if socs is None else f'{socs}soc'}"


def _type_is(kind: str) -> str:
    """Guarded: a device without ``type`` (an older driver's SoC) is simply not selected."""
    return f'has({_ATTRS}.type) && {_ATTRS}.type == "{kind}"'


def _cel(*expressions: str) -> list[k8s.resource.v1.DeviceSelectorArgsDict]:
    return [{"cel": {"expression": e}} for e in expressions]


def _spec(selectors: list[k8s.resource.v1.DeviceSelectorArgsDict], resource: str | None,
          ) -> k8s.resource.v1.DeviceClassSpecArgsDict:
    spec: k8s.resource.v1.DeviceClassSpecArgsDict = {"selectors": selectors}
    if resource:
        spec["extended_resource_name"] = resource
    return spec


def device_classes(sku_mode: bool = False,
                   ) -> list[tuple[str, k8s.resource.v1.DeviceClassSpecArgsDict]]:
    """``(name, spec)`` of every DeviceClass of DRA mode, for the stack's SKU mode."""
    out = [(ALL_SOCS_CLASS, _spec(_cel(driver_selector(), SOC_SELECTOR),
                                  None if sku_mode else RESOURCE_PREFIX))]
    for sku in SKU_NAMES:
        out.append((sku_class_name(sku), _spec(
            _cel(driver_selector(), sku_selector(sku), SOC_SELECTOR),
            f"{RESOURCE_PREFIX}-{sku}" if sku_mode else None)))
    for sku in CARD_SKUS:
        out.append((card_class_name(sku), _spec(
            _cel(driver_selector(), sku_selector(sku), _type_is(TYPE_CARD)),
            card_resource_name(sku))))
        for n in sorted(PART_SIZES, reverse=True):
            out.append((card_class_name(sku, n), _spec(
                _cel(driver_selector(), sku_selector(sku),
                     f"{_type_is(TYPE_PART)} && {_ATTRS}.socCount == {n}"),
                card_resource_name(sku, n))))
    return out


def extended_resource_names(sku_mode: bool = False) -> list[str]:
    """The extended resources DRA nodes serve through these classes (the stack's output)."""
    return [str(spec["extended_resource_name"]) for _, spec in device_classes(sku_mode)
            if spec.get("extended_resource_name")]
