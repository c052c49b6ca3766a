"""The generic kubelet layer against the kubelet simulator, over real Unix sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc import aio

from qaic_device_plugin.kubelet.feed import Feed
from qaic_device_plugin.kubelet.manager import PluginManager, socket_name
from qaic_device_plugin.kubelet.types import (
    ContainerAllocation,
    Device,
    DeviceSpec,
    PluginOptions,
    Refusal,
    RefusalKind,
    valid_extended_resource_name,
)
from qaic_device_plugin.sim.kubelet import KubeletSim


class ListBackend:
    """A minimal generic backend: the framework must work for any device kind."""

    def __init__(self, name: str, ids: Sequence[str]) -> None:
        self.resource_name = name
        self.options = PluginOptions(pre_start_required=True)
        self.devices = Feed(tuple(Device(i, True, (0,)) for i in ids))

    async def allocate(self, requests: Sequence[Sequence[str]]) -> list[ContainerAllocation]:
        known = {d.id for d in self.devices.value}
        for ids in requests:
            for i in ids:
                if i not in known:
                    raise Refusal(RefusalKind.INVALID_ARGUMENT, f"unknown device {i}")
        return [
            ContainerAllocation(
                devices=[DeviceSpec(f"/dev/{i}", f"/dev/{i}") for i in ids],
                envs={"N": str(len(ids))},
            )
            for ids in requests
        ]

    async def preferred_allocation(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        return (
            list(must_include)
            + [a for a in available if a not in must_include][: size - len(must_include)]
        )

    async def pre_start(self, device_ids: Sequence[str]) -> None:
        if "bad" in device_ids:
            raise Refusal(RefusalKind.FAILED_PRECONDITION, "bad device")


@pytest.fixture
async def kubelet(tmp_path: Path) -> AsyncIterator[KubeletSim]:
    async with KubeletSim(tmp_path / "plugins") as sim:
        yield sim


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[PluginManager]:
    m = PluginManager(tmp_path / "plugins", backoff=(0.01, 0.2))
    await m.start()
    yield m
    await m.close()


def test_resource_name_rules() -> None:
    assert valid_extended_resource_name("qualcomm.com/qaic")
    assert valid_extended_resource_name("qualcomm.com/qaic-ultra")
    assert not valid_extended_resource_name("qaic")
    assert not valid_extended_resource_name("kubernetes.io/qaic")
    assert not valid_extended_resource_name("foo.kubernetes.io/qaic")
    assert socket_name("qualcomm.com/qaic-ultra") == "qualcomm.com_qaic-ultra.sock"


async def test_register_list_allocate_prestart(kubelet: KubeletSim, manager: PluginManager) -> None:
    await manager.set_backends({"example.com/dev": ListBackend("example.com/dev", ["a", "b"])})
    await kubelet.wait_registered("example.com/dev")
    view = await kubelet.wait_devices("example.com/dev", healthy=2)
    assert view.options.pre_start_required
    assert view.numa == {"a": (0,), "b": (0,)}
    resp = await kubelet.allocate("example.com/dev", ["a"], ["a", "b"])
    assert [c.envs["N"] for c in resp.container_responses] == ["1", "2"]
    assert resp.container_responses[0].devices[0].host_path == "/dev/a"
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate("example.com/dev", ["zz"])
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown device zz" in (err.value.details() or "")
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.pre_start("example.com/dev", ["bad"])
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await kubelet.pre_start("example.com/dev", ["a"])


async def test_snapshot_change_reaches_kubelet(kubelet: KubeletSim, manager: PluginManager) -> None:
    backend = ListBackend("example.com/dev", ["a", "b"])
    await manager.set_backends({"example.com/dev": backend})
    await kubelet.wait_devices("example.com/dev", healthy=2)
    await backend.devices.publish((Device("a", True), Device("b", False)))
    view = await kubelet.wait_devices("example.com/dev", healthy=1, unhealthy=1)
    assert view.unhealthy == ["b"]


async def test_kubelet_restart_reregisters(kubelet: KubeletSim, manager: PluginManager) -> None:
    await manager.set_backends({"example.com/dev": ListBackend("example.com/dev", ["a"])})
    await kubelet.wait_devices("example.com/dev", healthy=1)
    for n in range(2, 5):
        await kubelet.restart()
        await kubelet.wait_registered("example.com/dev", count=n)
        await kubelet.wait_devices("example.com/dev", healthy=1)
    # kubelet records a Register on receipt, the manager counts it when the reply arrives:
    # await the count (bounded) rather than read it the instant kubelet saw the fourth.
    async def four() -> None:
        while manager.registrations("example.com/dev") < 4:  # noqa: ASYNC110 (a count, no event)
            await asyncio.sleep(0.01)

    await asyncio.wait_for(four(), 10)
    assert manager.registrations("example.com/dev") == 4  # exactly one per kubelet start
    assert (manager.plugin_dir / "example.com_dev.sock").is_socket()


async def test_waits_for_absent_kubelet(tmp_path: Path, manager: PluginManager) -> None:
    await manager.set_backends({"example.com/dev": ListBackend("example.com/dev", ["a"])})
    assert manager.registrations("example.com/dev") == 0
    async with KubeletSim(tmp_path / "plugins") as sim:
        await sim.wait_registered("example.com/dev")
        await sim.wait_devices("example.com/dev", healthy=1)


async def test_dropping_a_resource_removes_its_socket(
    kubelet: KubeletSim, manager: PluginManager
) -> None:
    await manager.set_backends({"example.com/dev": ListBackend("example.com/dev", ["a"])})
    await kubelet.wait_devices("example.com/dev", healthy=1)
    sock = manager.plugin_dir / "example.com_dev.sock"
    assert sock.is_socket()
    await manager.set_backends({})
    assert not sock.exists()
    # kubelet sees the stream end and marks the devices unhealthy
    await kubelet.wait_devices("example.com/dev", healthy=0, unhealthy=1)


async def test_register_rejected_name_is_reported(kubelet: KubeletSim) -> None:
    from qaic_device_plugin.kubelet.registration import register

    with pytest.raises(aio.AioRpcError) as err:
        await register(kubelet.socket, "nowhere.sock", "kubernetes.io/x", PluginOptions())
    assert "invalid resource name" in (err.value.details() or "")
    assert kubelet.rejections == ["invalid resource name 'kubernetes.io/x'"]
