"""Allocation quality: 1-, 2- and 4-SoC jobs arriving and leaving on 16 Ultra cards.

The event list is fixed by the seed and shared by every policy: jobs arrive as a Poisson
process, each with a size (1, 2 or 4 SoCs, weights `MIX`) and an exponential lifetime chosen so
the offered load is `load` x 64 SoCs; arrivals and departures are merged in time order and the
first `events` are kept. A job whose SoCs cannot be found is dropped (no queue), and its
departure is then a no-op.

Policies, each asked "which `size` of these free SoCs?":
- `ours`: qaic_device_plugin.qaic.topology.preferred_allocation, exactly as the plugin calls it.
- `kubelet-random`: kubelet with no preferred allocation. Its devicemanager
  (pkg/kubelet/cm/devicemanager/manager.go, devicesToAllocate/allocateRemainingFrom) takes the
  first `size` devices of a Go map iteration over the free set, and Go randomises map order, so
  this is a uniformly random choice (topology manager policy `none`: no NUMA filtering).
- `kubelet-sorted`: the same, modelled as lowest-IDs-first (the brief's assumption; PCI
  addresses sort card by card, so it is a card-order fill that ignores card boundaries).
- `first-fit`: the first card (in card-ID order) with room for the whole job; if none, the
  lowest free IDs across cards.

Admission: `prefer` (the default QAIC_MULTI_SOC_POLICY) places a job whenever enough SoCs are
free, so every policy places exactly the same jobs and only locality differs; `require` refuses
a multi-SoC job whose chosen SoCs span cards, so poor choices show up as jobs not placed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.qaic.topology import Placement, preferred_allocation
from qaic_device_plugin.sim.node import CardSpec, FakeNode

MIX: dict[int, float] = {1: 0.5, 2: 0.3, 4: 0.2}
ULTRA_CARDS = 16
NUMA_NODES = 4  # the fake node fits at most five Ultra cards per host bridge

Chooser = Callable[[list[str], int], list[str]]
Admission = Literal["prefer", "require"]
ADMISSIONS: tuple[Admission, ...] = ("prefer", "require")


def ultra_cards(cards: int = ULTRA_CARDS) -> list[CardSpec]:
    return [CardSpec(Sku.ULTRA, numa_node=i % NUMA_NODES) for i in range(cards)]


def node_placements(root: Path) -> list[Placement]:
    """The 16-Ultra node's SoCs as the plugin sees them (planned only; nothing is written)."""
    node = FakeNode(root, ultra_cards())
    return [Placement(s.pci_address, s.pci_address, s.card_id, s.numa_node) for s in node.socs]


@dataclass(frozen=True)
class Event:
    arrive: bool
    job: int
    size: int


def make_events(seed: int, events: int, load: float, capacity: int) -> list[Event]:
    rng = random.Random(seed)
    sizes, weights = zip(*MIX.items(), strict=True)
    mean_size = sum(s * w for s, w in MIX.items())
    lifetime = load * capacity / mean_size  # arrival rate 1: load = rate * lifetime * size
    timeline: list[tuple[float, int, Event]] = []
    t = 0.0
    job = 0
    arrivals = 0
    while arrivals < events:
        t += rng.expovariate(1.0)
        size = rng.choices(sizes, weights)[0]
        life = rng.expovariate(1.0 / lifetime)
        timeline.append((t, 1, Event(True, job, size)))
        timeline.append((t + life, 0, Event(False, job, size)))
        job += 1
        arrivals += 1
    timeline.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in timeline[:events]]


def policies(placements: Sequence[Placement], seed: int) -> dict[str, Chooser]:
    card_of = {p.device_id: p.card for p in placements}
    cards = sorted({p.card for p in placements})
    rng = random.Random(seed + 1)

    def ours(free: list[str], size: int) -> list[str]:
        return preferred_allocation(placements, free, [], size)

    def kubelet_random(free: list[str], size: int) -> list[str]:
        return rng.sample(free, size)

    def kubelet_sorted(free: list[str], size: int) -> list[str]:
        return sorted(free)[:size]

    def first_fit(free: list[str], size: int) -> list[str]:
        by_card: dict[str, list[str]] = {c: [] for c in cards}
        for d in sorted(free):
            by_card[card_of[d]].append(d)
        for c in cards:
            if len(by_card[c]) >= size:
                return by_card[c][:size]
        return sorted(free)[:size]

    return {
        "ours": ours,
        "kubelet-random": kubelet_random,
        "kubelet-sorted": kubelet_sorted,
        "first-fit": first_fit,
    }


@dataclass
class Outcome:
    policy: str
    admission: Admission
    arrivals: dict[int, int] = field(default_factory=dict)
    placed: dict[int, int] = field(default_factory=dict)
    one_card: dict[int, int] = field(default_factory=dict)
    unplaced: dict[int, int] = field(default_factory=dict)
    # arrivals that found one card with room for the whole job (one-card was possible)
    fits: dict[int, int] = field(default_factory=dict)
    mean_utilisation: float = 0.0
    requests: list[tuple[list[str], int, list[str]]] = field(default_factory=list)

    def pct_one_card(self, size: int) -> float:
        placed = self.placed.get(size, 0)
        return 100.0 * self.one_card.get(size, 0) / placed if placed else 0.0

    def pct_fits(self, size: int) -> float:
        """Of the placed jobs of `size`, how many arrived while one card had room for them."""
        placed = self.placed.get(size, 0)
        return 100.0 * self.fits.get(size, 0) / placed if placed else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "admission": self.admission,
            "arrivals": self.arrivals,
            "placed": self.placed,
            "one_card": self.one_card,
            "unplaced": self.unplaced,
            "fits_one_card": self.fits,
            "pct_one_card": {s: round(self.pct_one_card(s), 2) for s in (2, 4)},
            "unplaced_total": sum(self.unplaced.values()),
            "mean_utilisation": round(self.mean_utilisation, 4),
        }


def simulate(
    events: Sequence[Event],
    placements: Sequence[Placement],
    name: str,
    choose: Chooser,
    admission: Admission,
    *,
    record: bool = False,
) -> Outcome:
    card_of = {p.device_id: p.card for p in placements}
    free: set[str] = set(card_of)
    held: dict[int, list[str]] = {}
    out = Outcome(name, admission)
    used_sum = 0
    for ev in events:
        if not ev.arrive:
            for d in held.pop(ev.job, []):
                free.add(d)
        else:
            s = ev.size
            out.arrivals[s] = out.arrivals.get(s, 0) + 1
            per_card: dict[str, int] = {}
            for d in free:
                per_card[card_of[d]] = per_card.get(card_of[d], 0) + 1
            if any(n >= s for n in per_card.values()):
                out.fits[s] = out.fits.get(s, 0) + 1
            if len(free) < s:
                out.unplaced[s] = out.unplaced.get(s, 0) + 1
            else:
                avail = sorted(free)
                chosen = choose(avail, s)
                if len(chosen) != s or not set(chosen) <= free:
                    raise AssertionError(f"{name} chose {chosen} from {avail} for {s}")
                if record:
                    out.requests.append((avail, s, list(chosen)))
                spanned = len({card_of[d] for d in chosen})
                if admission == "require" and spanned > 1:
                    out.unplaced[s] = out.unplaced.get(s, 0) + 1
                else:
                    held[ev.job] = list(chosen)
                    free.difference_update(chosen)
                    out.placed[s] = out.placed.get(s, 0) + 1
                    if spanned == 1:
                        out.one_card[s] = out.one_card.get(s, 0) + 1
        used_sum += len(card_of) - len(free)
    out.mean_utilisation = used_sum / (len(events) * len(card_of)) if events else 0.0
    return out


def run_all(
    placements: Sequence[Placement], seed: int, events: int, load: float
) -> dict[Admission, dict[str, Outcome]]:
    evs = make_events(seed, events, load, len(placements))
    result: dict[Admission, dict[str, Outcome]] = {}
    for admission in ADMISSIONS:
        result[admission] = {
            name: simulate(evs, placements, name, fn, admission, record=(name == "ours"))
            for name, fn in policies(placements, seed).items()
        }
    return result
