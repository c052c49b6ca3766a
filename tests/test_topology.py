"""Preferred-allocation policy: invariants on random nodes, then one named scenario per rule."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qaic_device_plugin.qaic.topology import (
    Placement,
    cards_spanned,
    preferred_allocation,
    spread_replicas,
)

# --- node builders --------------------------------------------------------------------------


def card(bus: int, socs: int, numa: int | None = 0) -> list[Placement]:
    """One card: its id is the switch's PCI address, its SoCs the functions behind it."""
    card_id = f"0000:{bus:02x}:00.0"
    if socs == 1:  # Standard/Pro: no switch, the SoC is its own card
        return [Placement(card_id, card_id, card_id, numa)]
    ids = [f"0000:{bus + 1 + i:02x}:00.0" for i in range(socs)]
    return [Placement(i, i, card_id, numa) for i in ids]


def ultra(bus: int, numa: int | None = 0) -> list[Placement]:
    return card(bus, 4, numa)


def std(bus: int, numa: int | None = 0) -> list[Placement]:
    return card(bus, 1, numa)


def ids_of(devices: list[Placement]) -> list[str]:
    return [d.device_id for d in devices]


def card_of(devices: list[Placement], device_id: str) -> str:
    return next(d.card for d in devices if d.device_id == device_id)


def free_per_card(devices: list[Placement], available: list[str]) -> Counter[str]:
    avail = set(available)
    return Counter(d.card for d in devices if d.device_id in avail)


def size_per_card(devices: list[Placement]) -> Counter[str]:
    return Counter(d.card for d in devices)


# --- random layouts ---------------------------------------------------------------------------


@dataclass
class Case:
    devices: list[Placement]
    available: list[str]
    must: list[str]
    size: int


@st.composite
def layouts(draw: st.DrawFn) -> list[Placement]:
    kinds = draw(st.lists(st.sampled_from([1, 4]), min_size=1, max_size=8))
    numas = draw(st.sampled_from([(None,), (0,), (0, 1)]))
    buses = draw(st.permutations(range(len(kinds))))  # card ids independent of list order
    devices: list[Placement] = []
    for kind, b in zip(kinds, buses, strict=True):
        devices += card(0x10 + 8 * b, kind, draw(st.sampled_from(numas)))
    return devices


@st.composite
def cases(draw: st.DrawFn, with_must: bool = True, unknown: bool = True) -> Case:
    devices = draw(layouts())
    ids = ids_of(devices)
    available = [i for i in ids if draw(st.booleans())]
    if unknown and draw(st.booleans()):
        available += draw(st.lists(st.sampled_from(["bogus-a", "bogus-b", "zz"]), unique=True))
    size = draw(st.integers(1, 8))
    must: list[str] = []
    if with_must:
        must = draw(st.lists(st.sampled_from(ids), unique=True, max_size=size))
        if draw(st.booleans()):  # kubelet sends available | must_include
            available += [m for m in must if m not in available]
    return Case(devices, available, must, size)


def run(c: Case) -> list[str]:
    return preferred_allocation(c.devices, c.available, c.must, c.size)


# --- invariants -------------------------------------------------------------------------------

Policy = Callable[[Sequence[Placement], Sequence[str], Sequence[str], int], list[str]]
POLICIES: list[Policy] = [preferred_allocation, spread_replicas]


@pytest.mark.parametrize("policy", POLICIES)
@given(c=cases())
def test_result_invariants(policy: Policy, c: Case) -> None:
    got = policy(c.devices, c.available, c.must, c.size)
    pool = set(c.available) | set(c.must)
    assert len(got) == len(set(got)), "duplicates"
    assert len(got) == min(c.size, len(pool))
    assert set(c.must) <= set(got)
    assert set(got) <= pool


@pytest.mark.parametrize("policy", POLICIES)
@given(c=cases(), data=st.data())
def test_same_answer_whatever_the_input_order(policy: Policy, c: Case, data: st.DataObject) -> None:
    first = policy(c.devices, c.available, c.must, c.size)
    shuffled = policy(
        data.draw(st.permutations(c.devices)),
        data.draw(st.permutations(c.available)),
        data.draw(st.permutations(c.must)),
        c.size,
    )
    assert shuffled == first


@given(c=cases(with_must=False))
def test_fits_on_one_card_then_on_the_tightest(c: Case) -> None:
    free = free_per_card(c.devices, c.available)
    fitting = {k: n for k, n in free.items() if n >= c.size}
    if not fitting:
        return
    cards = cards_spanned(c.devices, run(c))
    assert len(cards) == 1
    assert free[cards[0]] == min(fitting.values())


@given(c=cases(with_must=False))
def test_single_soc_never_breaks_a_whole_ultra_while_a_used_card_has_room(c: Case) -> None:
    c.size = 1
    free = free_per_card(c.devices, c.available)
    sizes = size_per_card(c.devices)
    if not any(0 < free[k] < sizes[k] for k in sizes):
        return
    (chosen,) = cards_spanned(c.devices, run(c))
    assert not (sizes[chosen] == 4 and free[chosen] == 4)


def min_cards(frees: list[int], need: int) -> int | None:
    covered = 0
    for k, n in enumerate(sorted(frees, reverse=True), 1):
        covered += n
        if covered >= need:
            return k
    return None


@settings(max_examples=300)
@given(c=cases(with_must=False, unknown=False))
def test_spanning_fewest_cards_on_one_numa_node_keeping_whole_cards(c: Case) -> None:
    """Brute force over card subsets: (cards, whole Ultras broken, free SoCs on them)."""
    free = free_per_card(c.devices, c.available)
    if max(free.values(), default=0) >= c.size or sum(free.values()) < c.size:
        return  # fits on one card, or takes everything
    sizes = size_per_card(c.devices)
    numa = {d.card: d.numa_node for d in c.devices}

    def cost(cards: Sequence[str]) -> tuple[int, int, int]:
        whole = sum(1 for k in cards if sizes[k] > 1 and free[k] == sizes[k])
        return (len(cards), whole, sum(free[k] for k in cards))

    def best_of(pool: list[str]) -> tuple[int, int, int] | None:
        k = min_cards([free[x] for x in pool], c.size)
        if k is None:
            return None
        subsets = itertools.combinations(pool, k)
        return min(cost(s) for s in subsets if sum(free[x] for x in s) >= c.size)

    per_node = [best_of([k for k in free if numa[k] == node]) for node in set(numa.values())]
    feasible = [b for b in per_node if b is not None]
    got_cards = cards_spanned(c.devices, run(c))
    if feasible:
        assert len({numa[k] for k in got_cards}) == 1
        assert cost(got_cards) == min(feasible)
    else:
        assert cost(got_cards) == best_of(list(free))


@given(c=cases())
def test_must_include_cards_are_filled_first(c: Case) -> None:
    got = run(c)
    own = set(cards_spanned(c.devices, c.must))
    extra = [i for i in got if i not in c.must]
    free_on_own = [
        d.device_id
        for d in c.devices
        if d.card in own and d.device_id in set(c.available) - set(c.must)
    ]
    if any(card_of(c.devices, i) not in own for i in extra if i in ids_of(c.devices)):
        assert set(free_on_own) <= set(got)


# --- rules, one named scenario each -----------------------------------------------------------

A, B, C, D = 0x10, 0x20, 0x30, 0x40  # card buses
ua, ub, uc, ud = (ids_of(ultra(bus)) for bus in (A, B, C, D))
CARD = {bus: f"0000:{bus:02x}:00.0" for bus in (A, B, C, D)}


@dataclass
class Scenario:
    devices: list[Placement]
    available: list[str]
    must: list[str]
    size: int
    expect: list[str]


SCENARIOS = {
    "2-SoC request lands on the half-used card, not the free one": Scenario(
        ultra(A) + ultra(B), ua[2:] + ub, [], 2, ua[2:]
    ),
    "4-SoC request lands on the whole free card": Scenario(
        ultra(A) + ultra(B), ua[2:] + ub, [], 4, ub
    ),
    "3-SoC request takes the tightest fit (3 free) over a whole card": Scenario(
        ultra(A) + ultra(B) + ultra(C), ua[1:] + ub + uc[2:], [], 3, ua[1:]
    ),
    "5-SoC request spans two cards on one NUMA node": Scenario(
        ultra(A, 0) + ultra(B, 1) + ultra(C, 1) + ultra(D, 0),
        ua[1:] + ub + uc + ud[3:],
        [],
        5,
        ub + uc[:1],  # node 1 needs 2 cards, node 0 (3+1 free) cannot hold 5
    ),
    "spanning uses up fragments and keeps whole cards free": Scenario(
        ultra(A) + ultra(B) + ultra(C) + ultra(D),
        ua + ub + uc[1:] + ud[2:],
        [],
        5,
        ud[2:] + uc[1:],  # 2 + 3 free, leaving A and B whole
    ),
    "spanning breaks no whole card while fragments can hold it": Scenario(
        ultra(A) + ultra(B) + ultra(C) + std(D),
        ua[1:] + ub + uc[1:] + ids_of(std(D)),
        [],
        5,
        ua[1:] + uc[1:3],  # 3 + 3 keeps B whole; 4 + 1 would use fewer free SoCs but break B
    ),
    "one NUMA node is preferred over fewer cards across nodes": Scenario(
        ultra(A, 0) + ultra(B, 1) + ultra(C, 1) + ultra(D, 1),
        ua[1:] + ub[2:] + uc[2:] + ud[3:],
        [],
        5,
        ud[3:] + ub[2:] + uc[2:],  # 3 cards on node 1 rather than 3+2 across nodes
    ),
    "no single node holds it: fewest cards across nodes": Scenario(
        ultra(A, 0) + ultra(B, 1),
        ua + ub,
        [],
        6,
        ua + ub[:2],
    ),
    "must_include on card A fills from A first": Scenario(
        ultra(A) + ultra(B) + ultra(C),
        ua[1:] + ub[3:] + uc,
        [ua[0]],
        3,
        [ua[0], *ua[1:3]],
    ),
    "must_include card too small: the rest on one other card": Scenario(
        ultra(A) + ultra(B) + ultra(C),
        ua[3:] + ub[1:] + uc,
        [ua[2]],
        5,
        [ua[2], ua[3], *ub[1:]],
    ),
    "single SoC after must_include stays NUMA-local": Scenario(
        std(A, 0) + ultra(B, 1) + std(C, 0) + ultra(D, 0),
        ids_of(std(A)) + ub[3:] + ids_of(std(C)) + ud,
        ids_of(std(A)),
        2,
        ids_of(std(A)) + ids_of(std(C)),  # B has 1 free but sits on node 1
    ),
    "single SoC takes the most-used card": Scenario(
        ultra(A) + ultra(B) + ultra(C), ua + ub[2:] + uc[3:], [], 1, uc[3:]
    ),
    "single SoC prefers a partly used Ultra over a whole one": Scenario(
        ultra(A) + ultra(B), ua + ub[1:], [], 1, ub[1:2]
    ),
    "short of devices: everything that is there": Scenario(ultra(A), ua[2:], [], 4, ua[2:]),
    "unknown IDs only fill a shortfall, sorted": Scenario(
        ultra(A), ["zz", ua[3], "bogus"], [], 3, [ua[3], "bogus", "zz"]
    ),
    "unknown IDs unused while known ones suffice": Scenario(ultra(A), ["zz", *ua], [], 2, ua[:2]),
    "must_include larger than size is returned whole": Scenario(ultra(A), ua, ua[:3], 2, ua[:3]),
    "unknown must_include is kept": Scenario(ultra(A), ua, ["ghost"], 2, ["ghost", ua[0]]),
}


@pytest.mark.parametrize("s", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_scenario(s: Scenario) -> None:
    assert preferred_allocation(s.devices, s.available, s.must, s.size) == s.expect


def test_cards_spanned_sorts_dedups_and_ignores_unknown() -> None:
    devices = ultra(B) + ultra(A)
    assert cards_spanned(devices, [ub[0], ua[1], ub[2], "ghost"]) == [CARD[A], CARD[B]]
    assert cards_spanned(devices, []) == []


# --- shares mode --------------------------------------------------------------------------------


def replicas(devices: list[Placement], n: int) -> list[Placement]:
    return [
        Placement(f"{d.soc}::{r}", d.soc, d.card, d.numa_node) for d in devices for r in range(n)
    ]


SHARED = replicas(ultra(A) + std(B), 3)  # 5 SoCs x 3 replicas


def rid(soc: str, r: int) -> str:
    return f"{soc}::{r}"


def socs_of(ids: list[str]) -> list[str]:
    return [i.split("::")[0] for i in ids]


def test_spread_takes_one_replica_per_soc() -> None:
    got = spread_replicas(SHARED, ids_of(SHARED), [], 5)
    assert sorted(socs_of(got)) == sorted({d.soc for d in SHARED})


def test_spread_least_loaded_first() -> None:
    busy = {rid(ua[0], 0), rid(ua[0], 1), rid(ua[1], 0), rid(ua[3], 2)}
    available = [i for i in ids_of(SHARED) if i not in busy]
    got = spread_replicas(SHARED, available, [], 3)
    # load: ua[0]=2, ua[1]=1, ua[3]=1, ua[2]=0, std=0 -> the two idle SoCs, then ua[1] by id
    std_soc = ids_of(std(B))[0]
    assert got == [rid(ua[2], 0), rid(std_soc, 0), rid(ua[1], 1)]


def test_spread_keeps_must_include_and_avoids_its_soc() -> None:
    must = [rid(ua[2], 1)]
    got = spread_replicas(SHARED, ids_of(SHARED), must, 3)
    assert got[0] == must[0]
    assert socs_of(got[1:]) == [ua[0], ua[1]]


def test_spread_doubles_up_only_when_socs_run_out() -> None:
    got = spread_replicas(SHARED, ids_of(SHARED), [], 7)
    per_soc = Counter(socs_of(got))
    assert sorted(per_soc.values()) == [1, 1, 1, 2, 2]


def test_spread_ignores_card_topology() -> None:
    # Card packing would put both on Ultra B; spreading goes by load and SoC id only.
    devices = replicas(std(A) + ultra(B), 2)
    got = spread_replicas(devices, ids_of(devices), [], 2)
    assert socs_of(got) == [ids_of(std(A))[0], ub[0]]


@given(c=cases(with_must=False, unknown=False), n=st.integers(2, 4))
def test_spread_uses_distinct_socs_while_any_remain(c: Case, n: int) -> None:
    devices = replicas(c.devices, n)
    available = [rid(i, r) for i in c.available for r in range(n)]
    got = spread_replicas(devices, available, [], c.size)
    free_socs = {d.soc for d in devices if d.device_id in set(available)}
    assert len(set(socs_of(got))) == min(len(got), len(free_socs))


def test_spread_size_zero_and_nothing_free() -> None:
    assert spread_replicas(SHARED, ids_of(SHARED), [], 0) == []
    assert spread_replicas(SHARED, [], [], 2) == []
