"""kubelet/after_reply.py: a backend's per-call work runs once the reply is sent, never before,
over real gRPC on a Unix socket; outside a collecting call it runs on the loop's next turn."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from grpc import aio

from qaic_device_plugin.kubelet.after_reply import after_reply, collect
from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.kubelet.api import deviceplugin_pb2_grpc as pb_grpc
from qaic_device_plugin.kubelet.feed import Feed
from qaic_device_plugin.kubelet.server import PluginServer
from qaic_device_plugin.kubelet.types import (
    ContainerAllocation,
    Device,
    DeviceSpec,
    PluginOptions,
)


class _Backend:
    """Records, from its after-reply work, whether the reply had left the handler by then."""

    resource_name = "example.com/thing"
    options = PluginOptions()

    def __init__(self) -> None:
        self.devices: Feed[tuple[Device, ...]] = Feed(())
        self.handler_done = False
        self.seen: list[tuple[str, bool]] = []
        self.ran = asyncio.Event()

    async def allocate(self, requests: Sequence[Sequence[str]]) -> list[ContainerAllocation]:
        after_reply(self._after, requests[0][0])
        after_reply(self._fail)  # a failing piece must not stop the rest
        after_reply(self._after, "second")
        await asyncio.sleep(0.05)  # a loop turn (or many) before the reply: work still waits
        assert self.seen == []
        self.handler_done = True
        return [ContainerAllocation(devices=[DeviceSpec("/dev/x", "/dev/x", "rw")])]

    def _after(self, what: str) -> None:
        self.seen.append((what, self.handler_done))
        if len(self.seen) == 2:
            self.ran.set()

    def _fail(self) -> None:
        raise RuntimeError("boom")

    async def preferred_allocation(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        return list(available[:size])

    async def pre_start(self, device_ids: Sequence[str]) -> None:
        return None


async def test_backend_work_runs_after_the_reply(tmp_path: Path) -> None:
    backend = _Backend()
    server = PluginServer(backend, tmp_path / "p.sock")  # type: ignore[arg-type]
    await server.start()
    try:
        async with aio.insecure_channel(f"unix://{tmp_path / 'p.sock'}") as channel:
            stub = pb_grpc.DevicePluginStub(channel)
            req = pb.AllocateRequest(
                container_requests=[pb.ContainerAllocateRequest(devices_ids=["d0"])]
            )
            reply = await stub.Allocate(req, timeout=5)
            assert reply.container_responses[0].devices[0].host_path == "/dev/x"
            async with asyncio.timeout(5):
                await backend.ran.wait()
    finally:
        await server.stop()
    assert backend.seen == [("d0", True), ("second", True)]


async def test_outside_a_collecting_call_work_runs_on_the_next_turn() -> None:
    ran: list[int] = []
    after_reply(ran.append, 1)
    assert ran == []
    await asyncio.sleep(0)
    assert ran == [1]


async def test_collect_holds_work_until_its_callback() -> None:
    ran: list[int] = []

    async def call() -> None:
        done = collect()
        after_reply(ran.append, 2)
        await asyncio.sleep(0)
        assert ran == []
        done(None)

    await asyncio.create_task(call())  # a task of its own, as gRPC runs each handler
    assert ran == [2]
    after_reply(ran.append, 3)  # this context never collected: next turn
    await asyncio.sleep(0)
    assert ran == [2, 3]
