"""The bench's jobs: pods of 1, 2 or 4 SoCs (bench/quality's MIX, 0.5/0.3/0.2, as the cluster
simulation), created and deleted to hold a target load, i.e. the SoCs asked for by the jobs
in the cluster (pending or running) as a share of all SoCs.

- `fill(target)`: create jobs as fast as the bench can (bounded concurrency) until the demand
  reaches the target, then wait until they are bound or binding stalls (at load 1.0 some jobs
  cannot fit until others leave). From empty this is the throughput burst.
- `churn(target, rate, seconds)`: a closed loop at the target. `rate` times a second a random
  running job leaves (deleted; its node finishes it, as kubelet would) and new jobs come in
  until the demand is back at the target. Random departures are exponential lifetimes, as in
  the simulation; the jobs' sizes come from one seeded stream, so both modes get the same
  sizes in the same order.
"""

from __future__ import annotations

import asyncio
import random
import time

from bench.quality.simulation import MIX

from . import manifests
from .kube import Kube
from .tracker import PodRec, Tracker

CREATE_CONCURRENCY = 32
STALL_SECONDS = 15.0  # fill: no binding for this long and jobs left unbound -> they wait


class Load:
    def __init__(self, kube: Kube, tracker: Tracker, *, dra: bool, seed: int) -> None:
        self.kube = kube
        self.tracker = tracker
        self.dra = dra
        self._sizes = random.Random(seed)
        self._pick = random.Random(seed + 1)
        self.demand = 0  # SoCs asked for by jobs not deleted
        self._seq = 0
        self._path = f"/api/v1/namespaces/{manifests.NAMESPACE}/pods"
        self._sizes_w = (list(MIX), list(MIX.values()))

    def _size(self, room: int) -> int:
        while True:
            s = self._sizes.choices(*self._sizes_w)[0]
            if s <= room or room <= 0:
                return s

    async def _create(self, size: int, phase: str) -> None:
        self._seq += 1
        name = f"job-{self._seq:06d}-{size}"
        self.tracker.pods[name] = PodRec(size, phase, time.monotonic())
        await self.kube.create(self._path, manifests.pod(name, size, dra=self.dra))

    async def _top_up(self, target: int, phase: str) -> int:
        """Create jobs until the demand reaches `target` SoCs; returns how many."""
        sem = asyncio.Semaphore(CREATE_CONCURRENCY)
        tasks: list[asyncio.Task[None]] = []

        async def one(size: int) -> None:
            try:
                await self._create(size, phase)
            finally:
                sem.release()

        while self.demand < target:
            size = self._size(target - self.demand)
            self.demand += size
            await sem.acquire()
            tasks.append(asyncio.create_task(one(size)))
        await asyncio.gather(*tasks)
        return len(tasks)

    def unbound(self, phase: str) -> list[PodRec]:
        return [r for r in self.tracker.pods.values()
                if r.phase == phase and r.bound is None and not r.deleted]

    async def fill(self, target: int, phase: str, timeout: float) -> float:
        """Top up to `target`, then wait for the bindings; returns the seconds it took."""
        t0 = time.monotonic()
        await self._top_up(target, phase)
        deadline, last, last_bound = t0 + timeout, -1, time.monotonic()
        while self.unbound(phase) and time.monotonic() < deadline:
            bound = sum(1 for r in self.tracker.pods.values() if r.bound is not None)
            if bound != last:
                last, last_bound = bound, time.monotonic()
            elif time.monotonic() - last_bound > STALL_SECONDS:
                break
            await asyncio.sleep(0.2)
        return time.monotonic() - t0

    async def churn(self, target: int, phase: str, rate: float, seconds: float) -> int:
        """Hold `target` for `seconds` with `rate` departures a second; returns departures."""
        departures = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            running = [n for n, r in self.tracker.pods.items()
                       if r.bound is not None and not r.deleted and r.gone is None]
            if not running:
                await asyncio.sleep(0.2)
                continue
            name = self._pick.choice(running)
            rec = self.tracker.pods[name]
            rec.deleted = True
            self.demand -= rec.size
            await self.kube.delete(f"{self._path}/{name}")
            departures += 1
            await self._top_up(target, phase)
            await asyncio.sleep(max(0.0, departures / rate - (time.monotonic() - t0)))
        return departures
