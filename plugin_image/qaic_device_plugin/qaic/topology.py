"""Preferred-allocation policy: which free devices to offer kubelet for one request.

An Ultra card is four SoCs behind one PCIe switch, and peer-to-peer between SoCs only works
well inside one card, so multi-SoC jobs should land on one card and whole cards should stay
free for 4-SoC jobs. Kubelet calls GetPreferredAllocation with no timeout on the pod's
admission path, so this is pure and fast (sorting, a heap, and a short walk over how many cards
of each kind to take, never a search over subsets of cards), and deterministic: the answer
depends on the node's state, never on the order kubelet listed it in.

Both policies return every `must_include` ID first (sorted), then the chosen IDs in order of
preference, then unknown available IDs (sorted) only if the known ones run short. When
`must_include` alone reaches `size`, it is returned whole: kubelet has already committed those.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MultiSocPolicy",
    "Placement",
    "cards_spanned",
    "preferred_allocation",
    "spread_replicas",
]


class MultiSocPolicy(enum.StrEnum):
    PREFER = "prefer"  # allow cross-card sets, log and count them
    REQUIRE = "require"  # refuse cross-card sets at Allocate


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one schedulable device sits: the policy's whole view of the hardware."""

    device_id: str  # what kubelet schedules (a SoC's ID, or a replica ID when shared)
    soc: str  # the SoC (PCI address) it maps to; equal for all replicas of one SoC
    card: str  # card id
    numa_node: int | None


@dataclass(slots=True)
class _Card:
    card: str
    numa_node: int | None
    size: int  # every device of the card, taken or not: tells a whole free card from a rest
    free: list[str] = field(default_factory=list)  # sorted once filled

    @property
    def nfree(self) -> int:
        return len(self.free)


def _placement_key(p: Placement) -> tuple[str, str, bool, int]:
    return (p.card, p.soc, p.numa_node is None, p.numa_node or 0)


def _numa_key(numa: int | None) -> tuple[bool, int]:
    return (numa is None, numa or 0)


def _index(devices: Iterable[Placement]) -> dict[str, Placement]:
    """Map ID -> placement; a duplicated ID keeps its smallest placement, whatever the order."""
    index: dict[str, Placement] = {}
    for p in devices:
        seen = index.get(p.device_id)
        if seen is None or _placement_key(p) < _placement_key(seen):
            index[p.device_id] = p
    return index


def cards_spanned(devices: Sequence[Placement], ids: Iterable[str]) -> list[str]:
    """Sorted distinct cards of `ids`; unknown IDs are ignored (they have no card)."""
    index = _index(devices)
    return sorted({index[i].card for i in ids if i in index})


def preferred_allocation(
    devices: Sequence[Placement],
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    """Pick `size` IDs keeping a job's SoCs on as few cards as possible, whole cards last.

    `devices` is every device of the resource, so a card's size is known even when some of
    its SoCs are taken. Unknown IDs in `available` are offered only when known ones run out.
    """
    index = _index(devices)
    must = sorted(set(must_include))
    need = size - len(must)
    if need <= 0:
        return must
    must_set = set(must)
    free_ids = set(available) - must_set

    cards: dict[str, _Card] = {}
    for p in index.values():
        card = cards.get(p.card)
        if card is None:
            card = cards[p.card] = _Card(p.card, p.numa_node, 0)
        elif p.numa_node is not None and (card.numa_node is None or p.numa_node < card.numa_node):
            card.numa_node = p.numa_node  # a card is on one node; if sysfs disagrees, be stable
        card.size += 1
        if p.device_id in free_ids:
            card.free.append(p.device_id)
    for card in cards.values():
        card.free.sort()

    own_cards = {index[m].card for m in must if m in index}
    local = {index[m].numa_node for m in must if m in index} - {None}

    # The must-include SoCs' own cards first: the job already lives there.
    picks = _choose([cards[c] for c in sorted(own_cards) if cards[c].free], need, local)
    rest = [c for c in cards.values() if c.free and c.card not in own_cards]
    picks += _choose(rest, need - len(picks), local)

    short = need - len(picks)
    if short > 0:
        picks += sorted(i for i in free_ids if i not in index)[:short]
    return must + picks


def _choose(cards: list[_Card], need: int, local: set[int | None]) -> list[str]:
    """Take `need` free SoCs from `cards` (all of them if they hold no more than that)."""
    if need <= 0 or not cards:
        return []
    if sum(c.nfree for c in cards) <= need:
        return [i for c in sorted(cards, key=lambda c: c.card) for i in c.free]

    fits = [c for c in cards if c.nfree >= need]
    if fits:
        if need == 1:
            # Most-used card first, and never break a whole multi-SoC card while a partly
            # used one has room (equivalent to fewest-free with 1- and 4-SoC cards, but it
            # also holds for a card that lost a SoC to discovery).
            best = min(fits, key=lambda c: (c.numa_node not in local, _whole(c), c.nfree, c.card))
        else:
            # Tightest fit keeps the roomiest cards, and so whole cards, for bigger jobs.
            best = min(fits, key=lambda c: (c.numa_node not in local, c.nfree, c.card))
        return best.free[:need]

    # No card holds it: span the fewest cards, on one NUMA node if any node can hold it.
    groups: dict[int | None, list[_Card]] = {}
    for c in cards:
        groups.setdefault(c.numa_node, []).append(c)
    best_key: tuple[bool, int, int, int, tuple[bool, int]] | None = None
    chosen: list[_Card] | None = None
    for numa, group in groups.items():
        option = _fewest_cards(group, need)
        if option is None:
            continue
        key = (
            numa not in local,
            len(option),
            sum(map(_whole, option)),
            sum(c.nfree for c in option),
            _numa_key(numa),
        )
        if best_key is None or key < best_key:
            best_key, chosen = key, option
    if chosen is None:
        chosen = _fewest_cards(cards, need)
        assert chosen is not None  # the cards hold more than `need` altogether
    return _take(chosen, need)


def _whole(card: _Card) -> bool:
    """A free multi-SoC card: the only place a 4-SoC job fits, so worth keeping."""
    return card.size > 1 and card.nfree == card.size


def _fewest_cards(cards: list[_Card], need: int) -> list[_Card] | None:
    """Fewest cards holding `need` SoCs; then fewest whole cards broken; then fewest free
    SoCs on them, so fragments get used up and bigger pieces stay free.

    Exact, yet no subset search: only how many cards of each (free count, whole) class to
    take matters, and free counts take few values (1..4 on real hardware), so this walks
    count vectors, pruned, and takes the lowest card ids within a class.
    """
    ranked = sorted(cards, key=lambda c: (-c.nfree, c.card))
    covered = 0
    k = 0
    for card in ranked:
        covered += card.nfree
        k += 1
        if covered >= need:
            break
    else:
        return None

    classes: dict[tuple[int, bool], list[_Card]] = {}
    for card in ranked:  # card-id order within a class
        classes.setdefault((card.nfree, _whole(card)), []).append(card)
    order = sorted(classes, key=lambda cl: (-cl[0], cl[1]))
    sizes = [cl[0] for cl in order]
    counts = [len(classes[cl]) for cl in order]
    wholes = [int(cl[1]) for cl in order]

    def reach(i: int, left: int) -> int:
        """Most SoCs `left` cards from classes i.. can hold (-1: not enough cards)."""
        total = 0
        for j in range(i, len(order)):
            n = min(left, counts[j])
            total += n * sizes[j]
            left -= n
            if left == 0:
                return total
        return -1

    best: tuple[int, int] | None = None
    best_counts: list[int] = []
    taking = [0] * len(order)

    def walk(i: int, left: int, soc_sum: int, broken: int) -> None:
        nonlocal best, best_counts
        if left == 0:
            if soc_sum >= need and (best is None or (broken, soc_sum) < best):
                best, best_counts = (broken, soc_sum), taking.copy()
            return
        if best is not None and (broken, soc_sum) >= best:
            return  # both only grow from here
        most = reach(i, left)
        if most < 0 or soc_sum + most < need:
            return
        for n in range(min(left, counts[i]), -1, -1):
            taking[i] = n
            walk(i + 1, left - n, soc_sum + n * sizes[i], broken + n * wholes[i])
        taking[i] = 0

    walk(0, k, 0, 0)
    return [c for cl, n in zip(order, best_counts, strict=True) for c in classes[cl][:n]]


def _take(chosen: list[_Card], need: int) -> list[str]:
    """Empty the smallest chosen cards first so any remainder stays in one piece."""
    picks: list[str] = []
    for card in sorted(chosen, key=lambda c: (c.nfree, c.card)):
        picks += card.free[: need - len(picks)]
    return picks


def spread_replicas(
    devices: Sequence[Placement],
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
) -> list[str]:
    """Pick `size` replica IDs from the least-loaded SoCs, one per SoC while SoCs remain.

    Shares mode: replicas of one SoC run side by side without isolation, so spreading load
    matters more than card locality (Qualcomm turns topology-aware allocation off here). A
    SoC's load is its replicas not in `available`, i.e. held by other pods or unhealthy.
    """
    index = _index(devices)
    must = sorted(set(must_include))
    need = size - len(must)
    if need <= 0:
        return must
    avail = set(available)
    free_ids = avail - set(must)

    load: dict[str, int] = {}
    free: dict[str, list[str]] = {}
    for p in index.values():
        load.setdefault(p.soc, 0)
        if p.device_id not in avail:
            load[p.soc] += 1
        elif p.device_id in free_ids:
            free.setdefault(p.soc, []).append(p.device_id)
    used: dict[str, int] = {}
    for m in must:
        if m in index:
            soc = index[m].soc
            used[soc] = used.get(soc, 0) + 1

    # (replicas of this request on the SoC, load, SoC): one per SoC first, least loaded first.
    heap: list[tuple[int, int, str]] = []
    for soc, ids in free.items():
        ids.sort(reverse=True)  # pop() yields the smallest ID
        heap.append((used.get(soc, 0), load[soc], soc))
    heapq.heapify(heap)

    picks: list[str] = []
    while len(picks) < need and heap:
        n, soc_load, soc = heapq.heappop(heap)
        ids = free[soc]
        picks.append(ids.pop())
        if ids:
            heapq.heappush(heap, (n + 1, soc_load + 1, soc))

    short = need - len(picks)
    if short > 0:
        picks += sorted(i for i in free_ids if i not in index)[:short]
    return must + picks
