"""The PodResources v1 client over a real Unix socket, and the held-elsewhere policy."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qaic_device_plugin.kubelet.podresources import (
    ContainerDevices,
    PodResourcesUnavailable,
    list_devices,
)
from qaic_device_plugin.qaic.health import Signal
from qaic_device_plugin.qaic.held import Holding, held_elsewhere, mark_held
from qaic_device_plugin.qaic.inventory import Inventory, NodeState
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.podresources import PodResourcesSim

QAIC = "qualcomm.com/qaic"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="qaic-pr-"))  # short: Unix socket paths are limited
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_list_flattens_pods_into_container_devices(sock_dir: Path) -> None:
    held = [
        ContainerDevices("ml", "train-0", "main", QAIC, ("0000:35:00.0", "0000:36:00.0")),
        ContainerDevices("ml", "train-0", "side", "example.com/nic", ("eth1",)),
        ContainerDevices("default", "infer", "c", "qualcomm.com/qaic-pro", ("0000:90:00.0::3",)),
    ]
    async with PodResourcesSim(sock_dir / "kubelet.sock") as sim:
        sim.set_held(held)
        got = await list_devices(sim.socket, timeout=2)
    assert sorted(got, key=lambda c: (c.pod, c.container)) == sorted(
        held, key=lambda c: (c.pod, c.container)
    )


async def test_no_socket_is_unavailable_at_once(sock_dir: Path) -> None:
    t0 = time.monotonic()
    with pytest.raises(PodResourcesUnavailable, match="no such socket"):
        await list_devices(sock_dir / "absent.sock", timeout=5)
    assert time.monotonic() - t0 < 1


async def test_a_kubelet_that_never_answers_is_bounded(sock_dir: Path) -> None:
    """A listener that accepts and never speaks HTTP/2: the call ends at its timeout."""
    path = sock_dir / "hung.sock"
    server = await asyncio.start_unix_server(lambda r, w: None, path=str(path))
    try:
        t0 = time.monotonic()
        with pytest.raises(PodResourcesUnavailable, match=r"DEADLINE_EXCEEDED|UNAVAILABLE"):
            await list_devices(path, timeout=0.5)
        assert time.monotonic() - t0 < 3
    finally:
        server.close()


async def test_a_dead_socket_file_is_unavailable(sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens (kubelet stopped)
    with pytest.raises(PodResourcesUnavailable, match="UNAVAILABLE"):
        await list_devices(path, timeout=2)


# -- policy -----------------------------------------------------------------------------------


def _state(node: FakeNode) -> NodeState:
    return Inventory(node.sysfs_root, node.dev_root, {}).scan(None)


def _hold(device_id: str, resource: str = QAIC, pod: str = "p") -> Holding:
    return Holding("ns", pod, "c", resource, device_id)


def test_held_under_the_former_name_after_a_sku_flip(node: FakeNode) -> None:
    state = _state(node)
    pci = node.socs[0].pci_address
    holds = [_hold(pci)]
    # SKU mode off: qualcomm.com/qaic is what we advertise, so kubelet knows the pod has it.
    assert held_elsewhere(state.socs, holds, sku_mode=False, shares=1) == {}
    held = held_elsewhere(state.socs, holds, sku_mode=True, shares=1)
    assert held == {pci: holds[0]}
    marked = mark_held(state, held).by_pci()[pci]
    assert not marked.healthy
    assert marked.findings[-1].signal is Signal.HELD_ELSEWHERE
    assert f"ns/p under {QAIC} as {pci}" in marked.findings[-1].detail
    # the other SoCs are untouched
    assert all(s.healthy for p, s in mark_held(state, held).by_pci().items() if p != pci)


def test_held_under_a_former_device_id_after_a_shares_change(node: FakeNode) -> None:
    state = _state(node)
    pci = node.socs[1].pci_address
    replica = _hold(f"{pci}::3")
    assert pci in held_elsewhere(state.socs, [replica], sku_mode=False, shares=1)
    assert pci in held_elsewhere(state.socs, [replica], sku_mode=False, shares=2)
    assert held_elsewhere(state.socs, [replica], sku_mode=False, shares=4) == {}  # still ours
    assert pci in held_elsewhere(state.socs, [_hold(pci)], sku_mode=False, shares=4)


def test_held_under_another_sku_after_an_override(node: FakeNode) -> None:
    std = next(s for s in node.socs if s.sku.value == "std")
    state = Inventory(node.sysfs_root, node.dev_root, {}).scan(None)  # topology: std
    hold = _hold(std.pci_address, resource="qualcomm.com/qaic-std")
    assert held_elsewhere(state.socs, [hold], sku_mode=True, shares=1) == {}
    overridden = Inventory(node.sysfs_root, node.dev_root, {std.pci_address: Sku.PRO}).scan(None)
    assert std.pci_address in held_elsewhere(overridden.socs, [hold], sku_mode=True, shares=1)


def test_other_vendors_and_unknown_socs_are_ignored(node: FakeNode) -> None:
    state = _state(node)
    pci = node.socs[0].pci_address
    holds = [
        _hold(pci, resource="example.com/gpu"),
        _hold("0000:ff:00.0"),  # not on this node
    ]
    assert held_elsewhere(state.socs, holds, sku_mode=True, shares=1) == {}
