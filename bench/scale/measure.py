"""One scale run: N kwok nodes in one mode on a fresh control plane, from empty to each load.

Order: control plane + kwok; the namespace; N nodes created and Ready (device-plugin mode: the
extended resource checked in status after kwok's init, and again at the end); DRA mode: the
DeviceClasses, the claim templates, every node's SlicePublisher syncing once (writes at start)
and once more with nothing changed (writes per idle period); then per load a fill and a churn;
DRA mode: a last idle resync after all the claim traffic, then the write scenarios: a health
change on every node (one SoC fails, then recovers) and a kubelet restart on every node at once
(each wipes its node's slices; the drivers write them back). CPU and RSS of each process are
read at every phase boundary.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common.errors import BenchError

from . import control_plane, kwok, manifests, procstat, profiles, summary
from .kube import Kube, requests_by_kind
from .load import Load
from .publishers import (
    DEFAULT_NODE_CARDS,
    RESYNC_SECONDS,
    NodeLayout,
    Publishers,
    slice_requests,
)
from .tracker import Tracker, placements

Json = dict[str, Any]
NODE_CONCURRENCY = 32
IDLE_SECONDS = 45.0


@dataclass(frozen=True)
class Plan:
    nodes: tuple[int, ...]
    loads: tuple[float, ...]
    churn_rate: float  # departures per second
    churn_seconds: float
    fill_timeout: float
    #: the scheduler's and controller manager's client QPS, one run each; None: their defaults
    client_qps: tuple[float | None, ...]
    seed: int
    #: the idle window before the first job (the background CPU): a full kwok heartbeat
    #: cycle (20-45 s a node) in a full run; the first 15 s after the nodes come up miss it
    idle_seconds: float = IDLE_SECONDS
    #: where CPU profiles of the scheduler and API server during the first fill go (None: none)
    profile_dir: Path | None = None
    #: DRA: publish whole cards and parts with counters, as the driver does since 699f29a
    #: (False: the 16 SoC devices alone, as at the recorded run's 7ea028a)
    partitions: bool = True
    #: DRA: how a 4-SoC job asks: "constraint" (4 SoCs, matchAttribute cardID, the stack's
    #: template) or "card" (1 device of the whole-card class; needs partitions)
    four_soc: str = manifests.FOUR_SOC_CONSTRAINT
    #: the cards of every fake node (publishers.NODE_CARDS): "ultra" (four Ultra cards) or
    #: "mixed" (3 Ultra + 2 Standard + 2 Pro); 16 SoCs either way
    node_cards: str = DEFAULT_NODE_CARDS


async def _nodes(kube: Kube, names: list[str], socs: int, dra: bool, timeout: float) -> float:
    t0 = time.monotonic()
    sem = asyncio.Semaphore(NODE_CONCURRENCY)

    async def one(name: str) -> None:
        async with sem:
            await kube.create("/api/v1/nodes", manifests.node(name, socs, extended=not dra))

    await asyncio.gather(*(one(n) for n in names))
    while True:
        items = (await kube.list("/api/v1/nodes", labelSelector="type=kwok"))["items"]
        ready = sum(1 for i in items for c in i["status"].get("conditions") or ()
                    if c["type"] == "Ready" and c["status"] == "True")
        if ready >= len(names):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"{ready}/{len(names)} kwok nodes Ready after {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def _extended_ok(kube: Kube, socs: int) -> Json:
    """Device-plugin mode: does the extended resource stay in status once kwok manages it?"""
    items = (await kube.list("/api/v1/nodes", labelSelector="type=kwok"))["items"]
    have = [i["status"].get("allocatable", {}).get(manifests.RESOURCE) for i in items]
    return {"nodes": len(items), "with_resource": sum(1 for h in have if h == str(socs))}


async def _watch(kube: Kube, path: str, handle: Callable[[str, Json], None]) -> None:
    rv = (await kube.list(path, limit="1"))["metadata"]["resourceVersion"]
    async for kind, obj in kube.watch(path, rv):
        handle(kind, obj)


async def _slices(kube: Kube, pubs: Publishers, n: int) -> Json:
    """Writes and reads of resourceslices per node (the API server's count): first sync, idle
    resync."""
    out: Json = {}
    for label in ("start", "idle"):
        out[label] = await _round(kube, pubs, n)
    return out


async def _round(kube: Kube, pubs: Publishers, n: int, want: Any = None) -> Json:
    """One sync of every node's publisher (to `want`): the API server's resourceslices
    requests per node, and the most any node's publisher says it wrote."""
    before = slice_requests(await kube.text("/metrics"))
    done = await pubs.sync_all(want)
    after = slice_requests(await kube.text("/metrics"))
    return {"writes_per_node": (after["writes"] - before["writes"]) / n,
            "reads_per_node": (after["reads"] - before["reads"]) / n, **done.summary()}


async def _write_scenarios(kube: Kube, pubs: Publishers, n: int) -> Json:
    """What the drivers write when nothing changes for an hour, when one SoC on every node
    fails and comes back, and when every node's kubelet restarts at once."""
    out: Json = {"idle_after_jobs": await _round(kube, pubs, n)}
    idle = out["idle_after_jobs"]
    out["idle_hour"] = {"resync_seconds": RESYNC_SECONDS,
                        "resyncs": 3600 / RESYNC_SECONDS,
                        "writes_per_node": 3600 / RESYNC_SECONDS * idle["writes_per_node"],
                        "reads_per_node": 3600 / RESYNC_SECONDS * idle["reads_per_node"]}
    layout = pubs.layout
    if layout.one_unhealthy is not None:
        out["health_change"] = await _round(kube, pubs, n, layout.one_unhealthy)
        out["health_back"] = await _round(kube, pubs, n, layout.healthy)
    before = slice_requests(await kube.text("/metrics"))
    restart = await pubs.rewrite_after_wipe(kube)
    after = slice_requests(await kube.text("/metrics"))
    # the API server's count: N deletes of the collection (the kubelets'), then the drivers'
    restart["api_writes_per_node"] = (after["writes"] - before["writes"]) / n
    out["kubelet_restart_all"] = restart
    out["after_restart_idle"] = await _round(kube, pubs, n)
    return out


async def _run(cp: control_plane.ControlPlane, n: int, dra: bool, qps: float | None,
               plan: Plan, layout: NodeLayout) -> Json:
    kube = Kube(cp.api.url, cp.api.token)
    tracker = Tracker(placements([d.to_dict() for d in layout.devices]), dra,
                      members=layout.members)
    names = [f"kwok-{i:04d}" for i in range(n)]
    result: Json = {"nodes": n, "mode": "dra" if dra else "device-plugin", "client_qps": qps,
                    "node_cards": plan.node_cards, "phases": {}}
    if dra:
        result["dra_devices"] = {"partitions": layout.partitions, "four_soc": plan.four_soc,
                                 "devices_per_node": len(layout.devices),
                                 "counter_sets_per_node": len(layout.counter_sets)}
    readings: list[tuple[str, procstat.Reading]] = [("start", procstat.read(cp.pids))]
    watches: list[asyncio.Task[None]] = []
    pubs: Publishers | None = None
    try:
        await kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": manifests.NAMESPACE}})
        result["nodes_ready_s"] = round(await _nodes(kube, names, layout.socs, dra, 300), 2)
        for name in names:
            tracker.add_node(name)
        if dra:
            for obj in manifests.classes():
                await kube.create("/apis/resource.k8s.io/v1/deviceclasses", obj)
            for size in sorted({1, 2, 4}):
                await kube.create(f"/apis/resource.k8s.io/v1/namespaces/{manifests.NAMESPACE}"
                                  "/resourceclaimtemplates",
                                  manifests.claim_template(size, plan.four_soc))
            pubs = Publishers(cp.api.kubeconfig, names, layout)
            result["slices"] = await _slices(kube, pubs, n)
            await asyncio.sleep(2.0)  # the scheduler's informer has the slices
        else:
            result["extended_resource_after_init"] = await _extended_ok(kube, layout.socs)
        readings.append(("setup", procstat.read(cp.pids)))
        ns = f"namespaces/{manifests.NAMESPACE}"
        watches.append(asyncio.create_task(_watch(kube, f"/api/v1/{ns}/pods", tracker.on_pod)))
        if dra:
            watches.append(asyncio.create_task(_watch(
                kube, f"/apis/resource.k8s.io/v1/{ns}/resourceclaims", tracker.on_claim)))
        load = Load(kube, tracker, dra=dra, seed=plan.seed)
        total = n * layout.socs
        # the background (kwok's heartbeats, controllers' resyncs, watches): subtracted from
        # each phase's CPU to give the marginal CPU a pod costs
        await asyncio.sleep(plan.idle_seconds)
        readings.append(("idle", procstat.read(cp.pids)))

        requests_before = requests_by_kind(await kube.text("/metrics"))
        result["api_requests_per_bound_pod"] = {}

        async def step(label: str, work: Awaitable[Any]) -> None:
            nonlocal requests_before
            await work
            now = requests_by_kind(await kube.text("/metrics"))
            bound = sum(1 for r in tracker.pods.values()
                        if r.bound is not None and r.bound >= readings[-1][1].at)
            result["api_requests_per_bound_pod"][label] = {
                k: round((v - requests_before.get(k, 0.0)) / max(bound, 1), 2)
                for k, v in sorted(now.items()) if v - requests_before.get(k, 0.0) > 0}
            requests_before = now
            for w in watches:
                if w.done():
                    w.result()  # a watch that broke is an error, not a quiet figure
            readings.append((label, procstat.read(cp.pids)))
            result["phases"][label] = summary.phase(
                tracker.pods.values(), label, time.monotonic(), dra=dra)

        profiling: asyncio.Task[dict[str, list[str]]] | None = None
        if plan.profile_dir is not None:
            prefix = plan.profile_dir / f"{n}-{qps or 'default'}-{result['mode']}"
            profiling = asyncio.create_task(profiles.capture(
                {"kube-scheduler": f"https://127.0.0.1:{cp.ports['kube-scheduler']}",
                 "kube-apiserver": cp.api.url}, cp.api.token, prefix))
        for load_share in plan.loads:
            target = round(load_share * total)
            await step(f"fill-{load_share}", load.fill(target, f"fill-{load_share}",
                                                       plan.fill_timeout))
            if profiling is not None:
                result["profiles"] = await profiling
                profiling = None
            await step(f"churn-{load_share}", load.churn(
                target, f"churn-{load_share}", plan.churn_rate, plan.churn_seconds))
        if pubs is not None:
            result["slices"].update(await _write_scenarios(kube, pubs, n))
        else:
            result["extended_resource_at_end"] = await _extended_ok(kube, layout.socs)
        # every phase, summarised again now: a job bound after its phase ended counts too
        end = time.monotonic()
        for label in result["phases"]:
            result["phases"][label] = summary.phase(tracker.pods.values(), label, end, dra=dra)
        result["bench_requests"] = kube.requests
        result["watch_events"] = tracker.events
    finally:
        for w in watches:
            w.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        if pubs is not None:
            await pubs.close()
        await kube.close()
    pairs = [(label, a, b) for (_, a), (label, b) in itertools.pairwise(readings)]
    result["cpu_cores"] = {label: procstat.cores(a, b) for label, a, b in pairs}
    result["cpu_ms_per_bound_pod"] = {
        label: procstat.cpu_ms_per_pod(a, b, sum(
            1 for r in tracker.pods.values() if r.bound is not None and a.at <= r.bound < b.at))
        for label, a, b in pairs}
    background = result["cpu_cores"]["idle"]
    result["cpu_ms_per_bound_pod_marginal"] = {
        label: procstat.cpu_ms_per_pod(a, b, sum(
            1 for r in tracker.pods.values() if r.bound is not None and a.at <= r.bound < b.at),
            background)
        for label, a, b in pairs if label != "idle"}
    result["load_average"] = {label: round(b.load, 2) for label, _, b in pairs}
    last = readings[-1][1]
    result["rss_mb"] = {k: round(v, 1) for k, v in last.rss_mb.items()}
    result["hwm_mb"] = {k: round(v, 1) for k, v in last.hwm_mb.items()}
    return result


def run(n: int, dra: bool, qps: float | None, plan: Plan, kw: kwok.Kwok, layout: NodeLayout,
        work: Path) -> Json:
    """A fresh control plane and kwok for N nodes in one mode; stopped when done."""
    with control_plane.start(work, client_qps=qps) as cp:
        cp.spawn("kwok", kwok.argv(kw, cp.api.kubeconfig))
        try:
            return asyncio.run(_run(cp, n, dra, qps, plan, layout))
        except BenchError as e:
            raise BenchError(f"{e}\n{cp.tail()}") from e
