"""Whole Ultra cards, and parts of one card, as DRA devices beside their SoCs.

Why: one device of a card class is four SoCs of one card with no constraint to write, so
the extended-resource path (KEP-5004, which turns `qualcomm.com/qaic-ultra-card: 1` into a
claim for one device of a DeviceClass and cannot carry a `matchAttribute`) gets a whole card;
parts of 2 and 3 SoCs give `qaic-ultra: 2` or `3` one card in the same way (docs/dra.md).

How a card and its SoCs are never both allocated: partitionable devices (KEP-4815,
DRAPartitionableDevices, beta and on since 1.36). Each proven card has a counter set
`card-<card>` with one counter per SoC (named like the SoC's device, value 1). A SoC device
consumes its own counter, the card device all of them, a part its two or three. Whatever is
allocated uses up its counters, so every device that overlaps it is unallocatable until it is
freed. A per-card count (`socs: 4`) would not do: a part of SoCs 0+1 and SoC 0 fit in 4.

Which cards: proven ones only (their grouping comes from qaic-util's `Sku Type` or the
operator's override, never from PCIe topology alone: four single-SoC cards behind a server's
switch look the same), of a SKU whose SoC count is known (Ultra: 4), with every SoC present.
A part or card with an unhealthy SoC carries that SoC's taint.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from lightkube.models.resource_v1 import Device

from ..kubelet.dra.types import DeviceHealthReport
from ..qaic.inventory import SocState
from ..qaic.model import CardEvidence, Sku

Json = dict[str, Any]

#: SoCs per card of the multi-SoC SKUs whose count is known (FACTS.md: Ultra has 4).
SOCS_PER_CARD: dict[Sku, int] = {Sku.ULTRA: 4}
#: Evidence that makes a grouping a card (not a guess from a shared PCIe switch).
PROOF = frozenset({CardEvidence.QAIC_UTIL, CardEvidence.OVERRIDE})
#: The `type` attribute (qualified: qaic.qualcomm.com/type) of each kind of device.
TYPE_SOC, TYPE_CARD, TYPE_PART = "soc", "card", "part"
#: Sizes of the parts offered besides the whole card (every combination of that many SoCs).
PART_SIZES = (2, 3)


def _label(pci: str) -> str:
    return pci.lower().replace(":", "-").replace(".", "-")


def card_device_name(card_id: str) -> str:
    """`0000:34:00.0` -> `card-0000-34-00-0` (also the name of the card's counter set)."""
    return "card-" + _label(card_id)


def part_device_name(card_id: str, positions: Iterable[int]) -> str:
    """SoCs 0 and 1 (in PCI-address order) of card `0000:34:00.0` -> `card-0000-34-00-0-socs-01`."""
    return f"{card_device_name(card_id)}-socs-{''.join(str(p) for p in positions)}"


@dataclass(frozen=True, slots=True)
class Card:
    """A proven, complete card: its SoCs in PCI-address order, each with its SoC device."""

    card_id: str
    sku: Sku
    socs: tuple[SocState, ...]
    devices: tuple[Device, ...]

    @property
    def counter_set(self) -> str:
        return card_device_name(self.card_id)


def proven_cards(socs: Sequence[tuple[SocState, Device]]) -> list[Card]:
    """The cards whose SoCs may be offered together, in card-ID order."""
    by_card: dict[str, list[tuple[SocState, Device]]] = {}
    for state, device in socs:
        soc = state.soc
        if soc.card_id != soc.pci_address and soc.card_evidence in PROOF:
            by_card.setdefault(soc.card_id, []).append((state, device))
    out = []
    for card_id, members in sorted(by_card.items()):
        skus = {s.sku.sku for s, _ in members}
        if len(skus) != 1:
            continue  # firmware disagreeing within one card: offer its SoCs alone
        [sku] = skus
        if SOCS_PER_CARD.get(sku) != len(members):
            continue  # an unknown SoC count, or a SoC missing (withdrawn, hot-removed)
        members.sort(key=lambda m: m[0].soc.pci_address)
        out.append(Card(card_id, sku, tuple(s for s, _ in members),
                        tuple(d for _, d in members)))
    return out


@dataclass(frozen=True, slots=True)
class Partitioned:
    """What to publish: the SoC devices (those on a proven card consume its counters), then
    the card and part devices; the counter sets; and each card or part device's SoCs."""

    devices: list[Device]
    counter_sets: list[Json]
    members: dict[str, tuple[SocState, ...]]


def _consumes(card: Card, names: Iterable[str]) -> list[Json]:
    return [{"counterSet": card.counter_set,
             "counters": {n: {"value": "1"} for n in names}}]


def _group_device(card: Card, name: str, kind: str, idx: Sequence[int]) -> Device:
    states = [card.socs[i] for i in idx]
    devices = [card.devices[i] for i in idx]
    attrs: dict[str, Json] = {
        "type": {"string": kind},
        "sku": {"string": card.sku.value},
        "cardID": {"string": card.card_id},
        "socCount": {"int": len(idx)},
        "socs": {"string": ",".join(s.soc.pci_address for s in states)},
        "qids": {"string": ",".join(str(s.soc.qid) for s in states)},
    }
    numa = {s.soc.numa_node for s in states}
    if len(numa) == 1 and None not in numa:
        attrs["resource.kubernetes.io/numaNode"] = {"int": numa.pop()}
    raw: Json = {"name": name, "attributes": attrs,
                 "consumesCounters": _consumes(card, (d.name for d in devices))}
    tainted = next((d for d in devices if d.taints), None)
    if tainted is not None:
        raw["taints"] = [{"key": t.key, "value": t.value, "effect": t.effect}
                         for t in tainted.taints or ()]
    return cast(Device, Device.from_dict(raw))


def _soc_device(device: Device, card: Card | None) -> Device:
    raw = device.to_dict()
    raw["attributes"] = {**raw.get("attributes", {}), "type": {"string": TYPE_SOC}}
    if card is not None:
        raw["consumesCounters"] = _consumes(card, [device.name])
    return cast(Device, Device.from_dict(raw))


def partition(socs: Sequence[tuple[SocState, Device]]) -> Partitioned:
    """Every SoC device (typed `soc`), and for each proven card its card and part devices
    with the counters that keep overlapping devices apart."""
    cards = proven_cards(socs)
    card_of = {s.soc.pci_address: c for c in cards for s in c.socs}
    devices = [_soc_device(d, card_of.get(s.soc.pci_address)) for s, d in socs]
    counter_sets: list[Json] = []
    members: dict[str, tuple[SocState, ...]] = {}
    for card in cards:
        counter_sets.append({"name": card.counter_set,
                             "counters": {d.name: {"value": "1"} for d in card.devices}})
        whole = tuple(range(len(card.socs)))
        groups = [(card_device_name(card.card_id), TYPE_CARD, whole)]
        for size in PART_SIZES:
            if size < len(whole):
                groups += [(part_device_name(card.card_id, idx), TYPE_PART, idx)
                           for idx in itertools.combinations(whole, size)]
        for name, kind, idx in groups:
            devices.append(_group_device(card, name, kind, idx))
            members[name] = tuple(card.socs[i] for i in idx)
    return Partitioned(devices, counter_sets, members)


def group_health_reports(
    pool: str, members: dict[str, tuple[SocState, ...]],
) -> tuple[DeviceHealthReport, ...]:
    """kubelet's dra-health view of each card and part device: healthy while all its SoCs
    are, else the unhealthy SoCs' reasons (kubelet shows them in the holding pods' status)."""
    out = []
    for name, states in sorted(members.items()):
        bad = [s for s in states if not s.healthy]
        message = "; ".join(f"{s.soc.pci_address} {f.signal.value}: {f.detail}"
                            for s in bad for f in s.findings)
        out.append(DeviceHealthReport(pool, name, not bad, message))
    return tuple(out)
