"""Health flips (device nodes removed and re-created, as around SoC resets) while Allocate and
GetPreferredAllocation run concurrently from several asyncio tasks and OS threads.

Flips come in small random batches; after each batch kubelet's view must converge to the true
node state (a checkpoint not reached within 10 s is "lost"). No call may fail except with the
documented refusals: FAILED_PRECONDITION for an unhealthy SoC, INVALID_ARGUMENT for an ID the
plugin never offered (sent on purpose in some calls)."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import pytest
from grpc import aio
from reliability_harness import Report, scale

from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.kubelet.api import deviceplugin_pb2_grpc as pb_grpc
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode, FakeSoc
from qaic_device_plugin.sim.process import PluginProcess

pytestmark = pytest.mark.reliability

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"
SOCKET = "qualcomm.com_qaic.sock"
UNKNOWN = "0000:99:00.0"
TASKS, THREADS = 4, 2  # callers of each kind, half Allocate and half GetPreferredAllocation


class Tally:
    """Outcomes from tasks and threads; anything outside the documented set is a failure."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []

    def add(self, outcome: str, failure: str | None = None) -> None:
        with self._lock:
            self.counts[outcome] += 1
            if failure is not None and len(self.failures) < 20:
                self.failures.append(failure)


def check_allocation(
    resp: pb.AllocateResponse, ids: Sequence[str], socs: dict[str, FakeSoc]
) -> str | None:
    (c,) = resp.container_responses
    want_paths = sorted(f"/dev/accel/accel{socs[i].accel_index}" for i in ids)
    if sorted(d.host_path for d in c.devices) != want_paths:
        return f"Allocate {ids}: devices {[d.host_path for d in c.devices]}"
    qids = ",".join(str(q) for q in sorted(socs[i].qid for i in ids))
    if c.envs.get("QAIC_VISIBLE_DEVICES") != qids:
        return f"Allocate {ids}: QAIC_VISIBLE_DEVICES={c.envs.get('QAIC_VISIBLE_DEVICES')}"
    return None


def classify_refusal(e: grpc.RpcError, ids: Sequence[str]) -> tuple[str, str | None]:
    code, details = e.code(), e.details() or ""
    if code is grpc.StatusCode.INVALID_ARGUMENT and UNKNOWN in ids and UNKNOWN in details:
        return "refused_unknown", None
    if code is grpc.StatusCode.FAILED_PRECONDITION and "unhealthy" in details:
        return "refused_unhealthy", None
    return f"failed:{code.name}", f"{ids}: {code.name}: {details}"


def check_preferred(
    got: Sequence[str], available: Sequence[str], must: Sequence[str], size: int
) -> str | None:
    if len(got) != size or len(set(got)) != size:
        return f"preferred size {size} from {available}: {got}"
    if not set(got) <= set(available) or not set(must) <= set(got):
        return f"preferred {got} not within {available} or missing {must}"
    return None


def pick_request(rng: random.Random, ids: list[str]) -> list[str]:
    chosen = rng.sample(ids, rng.randint(1, 4))
    if rng.random() < 0.1:
        chosen.append(UNKNOWN)
    return chosen


def thread_caller(
    socket: Path,
    ids: list[str],
    socs: dict[str, FakeSoc],
    seed: int,
    stop: threading.Event,
    tally: Tally,
) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = pb_grpc.DevicePluginStub(channel)
        while not stop.is_set():
            if rng.random() < 0.5:
                req = pick_request(rng, ids)
                try:
                    resp = stub.Allocate(
                        pb.AllocateRequest(
                            container_requests=[pb.ContainerAllocateRequest(devices_ids=req)]
                        ),
                        timeout=10,
                    )
                except grpc.RpcError as e:
                    tally.add(*classify_refusal(e, req))
                    continue
                bad = check_allocation(resp, req, socs)
                tally.add("allocated" if bad is None else "wrong_allocation", bad)
            else:
                available = rng.sample(ids, rng.randint(4, len(ids)))
                must = rng.sample(available, rng.randint(0, 1))
                size = rng.randint(max(1, len(must)), 4)
                try:
                    resp2 = stub.GetPreferredAllocation(
                        pb.PreferredAllocationRequest(
                            container_requests=[
                                pb.ContainerPreferredAllocationRequest(
                                    available_deviceIDs=available,
                                    must_include_deviceIDs=must,
                                    allocation_size=size,
                                )
                            ]
                        ),
                        timeout=10,
                    )
                except grpc.RpcError as e:
                    code = e.code()
                    tally.add(f"failed:{code.name}", f"preferred: {code.name}")
                    continue
                got = list(resp2.container_responses[0].deviceIDs)
                bad = check_preferred(got, available, must, size)
                tally.add("preferred" if bad is None else "wrong_preferred", bad)


async def task_allocator(
    kubelet: KubeletSim, ids: list[str], socs: dict[str, FakeSoc], seed: int, tally: Tally
) -> None:
    rng = random.Random(seed)
    while True:
        req = pick_request(rng, ids)
        try:
            resp = await kubelet.allocate(QAIC, req)
        except aio.AioRpcError as e:
            tally.add(*classify_refusal(e, req))
            continue
        bad = check_allocation(resp, req, socs)
        tally.add("allocated" if bad is None else "wrong_allocation", bad)


async def task_preferrer(kubelet: KubeletSim, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    while True:
        healthy = kubelet.view(QAIC).healthy  # what kubelet would offer right now
        if not healthy:
            await asyncio.sleep(0.001)
            continue
        must = rng.sample(healthy, rng.randint(0, 1))
        size = rng.randint(max(1, len(must)), min(4, len(healthy)))
        try:
            got = await kubelet.preferred(QAIC, healthy, must, size)
        except aio.AioRpcError as e:
            tally.add(f"failed:{e.code().name}", f"preferred: {e.code().name}: {e.details()}")
            continue
        bad = check_preferred(got, healthy, must, size)
        tally.add("preferred" if bad is None else "wrong_preferred", bad)


def view_equals(want: dict[str, str]) -> Callable[[KubeletSim], bool]:
    return lambda k: k.view(QAIC).health == want


def join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)


async def test_health_flips_under_concurrent_calls(
    node: FakeNode,
    kubelet: KubeletSim,
    plugin_dir: Path,
    start_plugin: StartPlugin,
    report: Report,
) -> None:
    flips = scale(1_000, 10_000)
    report.tried = "health flips (device node removed/re-created) under concurrent calls"
    rng = random.Random(61)
    plugin = await start_plugin()
    socs = {s.pci_address: s for s in node.socs}
    ids = sorted(socs)
    await kubelet.wait_devices(QAIC, healthy=len(ids))
    present = dict.fromkeys(ids, True)

    def truth() -> dict[str, str]:
        return {p: "Healthy" if ok else "Unhealthy" for p, ok in present.items()}

    tally = Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=thread_caller,
            args=(plugin_dir / SOCKET, ids, socs, 100 + n, stop, tally),
            name=f"caller-{n}",
        )
        for n in range(THREADS)
    ]
    for t in threads:
        t.start()
    tasks = [
        asyncio.create_task(task_allocator(kubelet, ids, socs, 200 + n, tally))
        for n in range(TASKS // 2)
    ] + [asyncio.create_task(task_preferrer(kubelet, 300 + n, tally)) for n in range(TASKS // 2)]

    done = checkpoints = lost = 0
    try:
        while done < flips:
            for _ in range(min(rng.randint(1, 5), flips - done)):
                pci = rng.choice(ids)
                if present[pci]:
                    node.remove_device_node(pci)
                else:
                    node.restore_device_node(pci)
                present[pci] = not present[pci]
                done += 1
            want = truth()
            checkpoints += 1
            try:
                await kubelet.wait_for(view_equals(want), timeout=10)
            except TimeoutError:
                lost += 1
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(join_all, threads)

    final = kubelet.view(QAIC).health
    report.count = done
    report.lost = lost
    report.details.update(
        checkpoints=checkpoints,
        final_unhealthy=sum(not ok for ok in present.values()),
        calls=dict(tally.counts),
        health_events=len(plugin.events("health")),
    )
    assert plugin.returncode is None, "the plugin died"
    assert lost == 0, f"{lost} of {checkpoints} checkpoints never reached the true state"
    assert final == truth()
    assert not tally.failures, tally.failures
    assert tally.counts["allocated"] > 0 and tally.counts["preferred"] > 0, tally.counts
    assert not plugin.events("loop_died")
