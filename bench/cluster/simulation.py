"""Cluster simulation: where do 4-SoC jobs land, device-plugin mode against DRA mode?

8 nodes x 16 Ultra cards (4 SoCs each, 512 SoCs), `arrivals` jobs of 1, 2 or 4 SoCs (weights
bench.quality.simulation.MIX, the allocation-quality job's mix) arriving as a Poisson process
with exponential lifetimes (mean 1 time unit, so waits are in mean job lifetimes); the offered
load is `load` x 512 SoCs. A job that cannot be placed waits; pending jobs are retried in
arrival order when a job leaves (kube-scheduler's unschedulable queue is flushed by pod
deletions) and a later, smaller job may pass an earlier one (no reservation), as in
kube-scheduler.

Node choice (both modes): kube-scheduler's default NodeResourcesFit scoring is LeastAllocated
over CPU and memory only (extended resources and DRA devices are not scored by default). Jobs
are modelled as requesting CPU and memory in proportion to their SoCs, so a node's score is
floor(100 x free SoCs / 64); the highest wins, ties broken at random (selectHost).

- device-plugin: the scheduler filters on the node's free SoC count only; on the chosen node,
  kubelet takes our preferred allocation (qaic.topology.preferred_allocation, the real code).
  With QAIC_MULTI_SOC_POLICY=prefer the job runs even when its SoCs span cards.
- dra: a multi-SoC claim carries `matchAttribute: qaic.qualcomm.com/cardID`, so a node passes
  the filter only if one card has room; the structured allocator then takes devices in slice
  order (PCI order = card order), i.e. the first card that fits, its lowest free SoCs.
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.quality.simulation import MIX, node_placements
from qaic_device_plugin.qaic.topology import Placement, preferred_allocation

NODES = 8
MODES = ("device-plugin", "dra")
LOADS = (0.6, 0.85, 1.0)


@dataclass
class Node:
    placements: list[Placement]
    card_of: dict[str, str]
    free: set[str] = field(default_factory=set)
    card_free: dict[str, int] = field(default_factory=dict)

    @classmethod
    def new(cls, placements: list[Placement]) -> Node:
        card_of = {p.device_id: p.card for p in placements}
        free_by_card: dict[str, int] = {}
        for c in card_of.values():
            free_by_card[c] = free_by_card.get(c, 0) + 1
        return cls(placements, card_of, set(card_of), free_by_card)

    def score(self) -> int:
        return 100 * len(self.free) // len(self.card_of)

    def fits(self, size: int, mode: str) -> bool:
        if mode == "dra" and size > 1:
            return max(self.card_free.values()) >= size
        return len(self.free) >= size

    def choose(self, size: int, mode: str) -> list[str]:
        if mode == "device-plugin":
            return preferred_allocation(self.placements, sorted(self.free), [], size)
        for card in sorted(self.card_free):  # the first card (in device order) that fits
            if self.card_free[card] >= size:
                return sorted(d for d in self.free if self.card_of[d] == card)[:size]
        raise AssertionError("filtered node has no card that fits")

    def take(self, ids: list[str]) -> None:
        for d in ids:
            self.free.remove(d)
            self.card_free[self.card_of[d]] -= 1

    def give(self, ids: list[str]) -> None:
        for d in ids:
            self.free.add(d)
            self.card_free[self.card_of[d]] += 1


@dataclass
class Stats:
    jobs: dict[int, int] = field(default_factory=dict)
    one_card: dict[int, int] = field(default_factory=dict)
    waited: dict[int, int] = field(default_factory=dict)
    wait: dict[int, float] = field(default_factory=dict)

    def add(self, size: int, cards: int, wait: float) -> None:
        self.jobs[size] = self.jobs.get(size, 0) + 1
        self.one_card[size] = self.one_card.get(size, 0) + (cards == 1)
        self.waited[size] = self.waited.get(size, 0) + (wait > 0)
        self.wait[size] = self.wait.get(size, 0.0) + wait

    def row(self, size: int) -> dict[str, float]:
        n = self.jobs.get(size, 0) or 1
        return {
            "jobs": self.jobs.get(size, 0),
            "one_card_pct": 100.0 * self.one_card.get(size, 0) / n,
            "waited_pct": 100.0 * self.waited.get(size, 0) / n,
            "mean_wait": self.wait.get(size, 0.0) / n,
        }


def simulate(
    placements: list[Placement], mode: str, load: float, arrivals: int, seed: int
) -> Stats:
    rng = random.Random(seed)  # the same job stream for both modes at one load
    tie = random.Random(seed + 1)
    sizes, weights = zip(*MIX.items(), strict=True)
    mean_size = sum(s * w for s, w in MIX.items())
    nodes = [Node.new(placements) for _ in range(NODES)]
    rate = load * NODES * len(placements) / mean_size  # mean lifetime 1
    heap: list[tuple[float, int, int, int]] = []  # (time, 0=leave 1=arrive, job, node)
    t = 0.0
    jobs: dict[int, tuple[int, float, float]] = {}  # job -> (size, arrived, lifetime)
    for j in range(arrivals):
        t += rng.expovariate(rate)
        jobs[j] = (rng.choices(sizes, weights)[0], t, rng.expovariate(1.0))
        heapq.heappush(heap, (t, 1, j, -1))
    held: dict[int, list[str]] = {}
    pending: dict[int, deque[int]] = {s: deque() for s in sizes}
    stats = Stats()

    def place(job: int, now: float, candidates: Sequence[int]) -> bool:
        size, arrived, life = jobs[job]
        ok = [n for n in candidates if nodes[n].fits(size, mode)]
        if not ok:
            return False
        best = max(nodes[n].score() for n in ok)
        n = tie.choice([n for n in ok if nodes[n].score() == best])
        ids = nodes[n].choose(size, mode)
        nodes[n].take(ids)
        held[job] = ids
        stats.add(size, len({nodes[n].card_of[d] for d in ids}), now - arrived)
        heapq.heappush(heap, (now + life, 0, job, n))
        return True

    while heap:
        now, arrive, job, n = heapq.heappop(heap)
        if arrive:
            if not place(job, now, range(NODES)):
                pending[jobs[job][0]].append(job)
            continue
        nodes[n].give(held.pop(job))
        # Only node n gained room, and every pending job of one size is alike: try the
        # earliest-arrived head among the sizes that still fit, until none does.
        while True:
            heads = sorted((q[0], s) for s, q in pending.items() if q)
            for head, s in heads:
                if place(head, now, [n]):
                    pending[s].popleft()
                    break
            else:
                break
    return stats


def run(arrivals: int, seed: int, loads: Sequence[float] = LOADS) -> dict[float, dict[str, Stats]]:
    placements = node_placements(Path("/nonexistent/bench-cluster"))
    return {
        load: {mode: simulate(placements, mode, load, arrivals, seed) for mode in MODES}
        for load in loads
    }


def markdown(result: dict[float, dict[str, Stats]]) -> str:
    lines = [
        "| load | mode | 4-SoC on one card | 4-SoC waited | 4-SoC mean wait | "
        "1-SoC waited | 2-SoC on one card |",
        "|---|---|---|---|---|---|---|",
    ]
    for load, by_mode in result.items():
        for mode, st in by_mode.items():
            four, one, two = st.row(4), st.row(1), st.row(2)
            lines.append(
                f"| {load} | {mode} | {four['one_card_pct']:.1f}% | {four['waited_pct']:.1f}% "
                f"| {four['mean_wait']:.3f} | {one['waited_pct']:.1f}% "
                f"| {two['one_card_pct']:.1f}% |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    p.add_argument("--arrivals", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=12)
    args = p.parse_args(argv)
    result = run(args.arrivals, args.seed)
    print(f"{NODES} nodes x 16 Ultra cards, {args.arrivals:,} arrivals per run, seed {args.seed};")
    print("waits in mean job lifetimes\n")
    print(markdown(result))
    return 0
