"""What happened to every job pod, from the API server's watch streams (pods; in DRA mode also
ResourceClaims), with the bench's clock: created (just before the POST), first marked
unschedulable by the scheduler, bound (spec.nodeName seen), gone.

It also keeps a device-level view of every node, to say which card each multi-SoC job got:
- DRA: exactly what the scheduler allocated (the claim's status.allocation results, pool =
  node, device -> its cardID attribute); taken when the allocation appears, given back when the
  claim is deleted or deallocated.
- device-plugin: kwok runs no device plugin and the scheduler only counts the extended
  resource, so nobody picks SoCs. The view is then a model: on the node the real scheduler
  chose, kubelet takes our plugin's preferred allocation (qaic.topology.preferred_allocation,
  the real code) among that node's free SoCs, in binding order; given back when the pod is gone.

`cards_with_room` (cards with 4 free SoCs, cluster-wide) lets a 4-SoC job that waited say
whether some card had room at that moment in the bench's view (which lags the scheduler's by a
watch event).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qaic_device_plugin.qaic.topology import Placement, preferred_allocation

Json = dict[str, Any]
ROOM = 4  # the job size whose "some card has room" the bench tracks


@dataclass
class PodRec:
    size: int
    phase: str
    created: float
    unschedulable: float | None = None
    bound: float | None = None
    node: str | None = None
    devices: list[str] | None = None
    cards: int | None = None  # distinct cards of its SoCs (DRA: allocated; device-plugin: model)
    room_when_waiting: bool | None = None  # a 4-SoC job that waited: did some card have room?
    room_on_node: bool | None = None  # device-plugin model: its node had a card with room
    room_anywhere: bool | None = None  # a 4-SoC job, as it got its SoCs: some card had room
    deleted: bool = False
    gone: float | None = None


def placements(devices: list[Json]) -> list[Placement]:
    """The SoC devices (those with a PCI address; not whole-card or part devices)."""
    out = []
    for d in devices:
        a = d["attributes"]
        if "resource.kubernetes.io/pciBusID" not in a:
            continue
        numa = a.get("resource.kubernetes.io/numaNode", {}).get("int")
        out.append(Placement(d["name"], a["resource.kubernetes.io/pciBusID"]["string"],
                             a["cardID"]["string"], numa))
    return out


@dataclass
class NodeView:
    free: set[str]
    card_free: dict[str, int]


@dataclass
class Tracker:
    layout: list[Placement]
    dra: bool
    clock: Callable[[], float] = time.monotonic
    pods: dict[str, PodRec] = field(default_factory=dict)
    nodes: dict[str, NodeView] = field(default_factory=dict)
    cards_with_room: int = 0
    claims: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)  # -> pod, node, ids
    events: int = 0
    #: DRA: a published device -> the SoC devices it uses (a whole card: its four); none: SoCs
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.card_of = {p.device_id: p.card for p in self.layout}

    def add_node(self, name: str) -> None:
        cards: dict[str, int] = {}
        for p in self.layout:
            cards[p.card] = cards.get(p.card, 0) + 1
        self.nodes[name] = NodeView(set(self.card_of), cards)
        self.cards_with_room += sum(1 for n in cards.values() if n >= ROOM)

    def _move(self, node: str, ids: list[str], take: bool) -> None:
        view = self.nodes[node]
        for d in ids:
            card = self.card_of[d]
            before = view.card_free[card]
            if take:
                view.free.discard(d)
                view.card_free[card] = before - 1
            else:
                view.free.add(d)
                view.card_free[card] = before + 1
            after = view.card_free[card]
            self.cards_with_room += (after >= ROOM) - (before >= ROOM)

    # -- pods ------------------------------------------------------------------------------

    def on_pod(self, kind: str, obj: Json) -> None:
        self.events += 1
        rec = self.pods.get(obj["metadata"]["name"])
        if rec is None:
            return
        now = self.clock()
        if kind == "DELETED":
            rec.gone = now
            if not self.dra and rec.node and rec.devices:
                self._move(rec.node, rec.devices, take=False)
            return
        node = obj["spec"].get("nodeName")
        if node and rec.bound is None:
            rec.bound, rec.node = now, node
            if not self.dra and node in self.nodes:
                self._model_allocate(rec, node)
        elif rec.bound is None and rec.unschedulable is None:
            for c in obj.get("status", {}).get("conditions") or ():
                if c["type"] == "PodScheduled" and c["status"] == "False":
                    rec.unschedulable = now
                    if rec.size == ROOM:
                        rec.room_when_waiting = self.cards_with_room > 0

    def _model_allocate(self, rec: PodRec, node: str) -> None:
        view = self.nodes[node]
        if len(view.free) < rec.size:  # the scheduler's count and ours disagree: say so
            rec.cards = None
            return
        rec.room_on_node = max(view.card_free.values()) >= rec.size
        if rec.size == ROOM:
            rec.room_anywhere = self.cards_with_room > 0
        ids = preferred_allocation(self.layout, sorted(view.free), [], rec.size)
        rec.devices = ids
        rec.cards = len({self.card_of[d] for d in ids})
        self._move(node, ids, take=True)

    # -- claims (DRA) ----------------------------------------------------------------------

    def on_claim(self, kind: str, obj: Json) -> None:
        self.events += 1
        name = obj["metadata"]["name"]
        alloc = (obj.get("status") or {}).get("allocation")
        if kind == "DELETED" or not alloc:
            held = self.claims.pop(name, None)
            if held is not None:
                self._move(held[1], held[2], take=False)
            return
        if name in self.claims:
            return
        owners = [o["name"] for o in obj["metadata"].get("ownerReferences") or ()
                  if o.get("kind") == "Pod"]
        results = alloc.get("devices", {}).get("results") or []
        if not owners or not results:
            return
        node = results[0]["pool"]
        ids = [s for r in results for s in self.members.get(r["device"], (r["device"],))]
        self.claims[name] = (owners[0], node, ids)
        rec = self.pods.get(owners[0])
        if rec is not None and rec.size == ROOM:
            rec.room_anywhere = self.cards_with_room > 0
        if node in self.nodes:
            self._move(node, ids, take=True)
        if rec is not None:
            rec.devices = ids
            rec.cards = len({self.card_of.get(d, d) for d in ids})
