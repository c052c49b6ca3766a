"""Issue 13 item 5 through the real plugin process: a SoC that a running pod holds under a
resource name or device ID the plugin no longer advertises is Unhealthy until it is released
(kubelet's PodResources API, served by the simulator over a real Unix socket)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from test_observability_process import free_port, http_get, samples

from qaic_device_plugin.kubelet.podresources import ContainerDevices
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.podresources import PodResourcesSim
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]

QAIC = "qualcomm.com/qaic"
ULTRA = "qualcomm.com/qaic-ultra"
FAST = {"QAIC_RESYNC_SECONDS": "0.2"}


@pytest.fixture
async def pod_resources() -> AsyncIterator[PodResourcesSim]:
    d = tempfile.mkdtemp(prefix="qaic-pr-")  # short: Unix socket paths are limited
    async with PodResourcesSim(Path(d) / "kubelet.sock") as sim:
        yield sim
    shutil.rmtree(d, ignore_errors=True)


async def test_sku_flip_keeps_a_soc_held_under_the_old_name_unhealthy_until_released(
    node: FakeNode,
    kubelet: KubeletSim,
    start_plugin: StartPlugin,
    pod_resources: PodResourcesSim,
) -> None:
    x = next(s for s in node.socs if s.sku.value == "ultra").pci_address
    # The pod was admitted while SKU mode was off: kubelet files X under qualcomm.com/qaic.
    pod_resources.set_held([ContainerDevices("ml", "train-0", "main", QAIC, (x,))])
    port = free_port()
    plugin = await start_plugin(
        QAIC_SKU_BASED_RESOURCE_ENABLED="true",
        QAIC_POD_RESOURCES_SOCKET=str(pod_resources.socket),
        QAIC_METRICS_PORT=str(port),
        QAIC_METRICS_ADDRESS="127.0.0.1",
        **FAST,
    )
    view = await kubelet.wait_devices(ULTRA, healthy=7, unhealthy=1)
    assert view.unhealthy == [x]
    # never offered as free, not even in the first snapshot
    assert [e["healthy"] for e in plugin.events("health") if e["pci"] == x] == [False]
    (held,) = plugin.events("soc_held_elsewhere")
    assert held["reason"] == f"held by ml/train-0 under {QAIC} as {x}"
    assert held["pci"] == x and held["advertised_as"] == ULTRA
    _, body = await http_get(port, "/metrics")
    assert samples(body, "qaic_socs_held_elsewhere") == {(): 1.0}
    # kubelet cannot hand it to a second pod either
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate(ULTRA, [x])
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "ml/train-0" in (err.value.details() or "")

    pod_resources.set_held([])  # the pod ended
    await kubelet.wait_devices(ULTRA, healthy=8, timeout=5)
    assert [e["pci"] for e in plugin.events("soc_released")] == [x]
    _, body = await http_get(port, "/metrics")
    assert samples(body, "qaic_socs_held_elsewhere") == {(): 0.0}
    assert plugin.returncode is None  # no restart needed


async def test_shares_change_keeps_a_soc_held_as_a_replica_unhealthy_until_released(
    node: FakeNode,
    kubelet: KubeletSim,
    start_plugin: StartPlugin,
    pod_resources: PodResourcesSim,
) -> None:
    x, y = node.socs[2].pci_address, node.socs[5].pci_address
    # Admitted with ALLOWED_QAIC_DEVICE_SHARES=4: X::3 held; Y held as X's neighbour replica 0.
    pod_resources.set_held(
        [
            ContainerDevices("default", "infer-a", "c", QAIC, (f"{x}::3",)),
            ContainerDevices("default", "infer-b", "c", QAIC, (f"{y}::0",)),
        ]
    )
    plugin = await start_plugin(QAIC_POD_RESOURCES_SOCKET=str(pod_resources.socket), **FAST)
    view = await kubelet.wait_devices(QAIC, healthy=8, unhealthy=2)
    assert view.unhealthy == sorted([x, y])
    reasons = {e["pci"]: e["reason"] for e in plugin.events("soc_held_elsewhere")}
    assert reasons[x] == f"held by default/infer-a under {QAIC} as {x}::3"
    pod_resources.set_held([ContainerDevices("default", "infer-b", "c", QAIC, (f"{y}::0",))])
    view = await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    assert view.unhealthy == [y]
    pod_resources.set_held([])
    await kubelet.wait_devices(QAIC, healthy=10, timeout=5)


async def test_shares_change_with_replicas_marks_every_replica(
    node: FakeNode,
    kubelet: KubeletSim,
    start_plugin: StartPlugin,
    pod_resources: PodResourcesSim,
) -> None:
    """Held as a whole SoC (shares were 1), advertised now as 2 replicas: both Unhealthy."""
    x = node.socs[0].pci_address
    pod_resources.set_held([ContainerDevices("ns", "p", "c", QAIC, (x,))])
    await start_plugin(
        ALLOWED_QAIC_DEVICE_SHARES="2", QAIC_POD_RESOURCES_SOCKET=str(pod_resources.socket)
    )
    view = await kubelet.wait_devices(QAIC, healthy=18, unhealthy=2)
    assert view.unhealthy == [f"{x}::0", f"{x}::1"]


async def test_a_new_sku_override_keeps_a_soc_held_under_its_old_sku_unhealthy(
    node: FakeNode,
    kubelet: KubeletSim,
    start_plugin: StartPlugin,
    pod_resources: PodResourcesSim,
) -> None:
    pro = next(s for s in node.socs if s.sku.value == "pro").pci_address
    # No qaic-util: the lone Pro SoC was offered (and taken) as a guessed Std.
    pod_resources.set_held([ContainerDevices("ns", "p", "c", "qualcomm.com/qaic-std", (pro,))])
    plugin = await start_plugin(
        qaic_util=False,
        QAIC_SKU_BASED_RESOURCE_ENABLED="1",
        QAIC_SKU_OVERRIDES=f'{{"{pro}": "pro"}}',
        QAIC_POD_RESOURCES_SOCKET=str(pod_resources.socket),
    )
    view = await kubelet.wait_devices("qualcomm.com/qaic-pro", healthy=0, unhealthy=1)
    assert view.unhealthy == [pro]
    (held,) = plugin.events("soc_held_elsewhere")
    assert held["resource"] == "qualcomm.com/qaic-std"


async def test_a_soc_held_under_the_current_name_and_id_stays_healthy(
    node: FakeNode,
    kubelet: KubeletSim,
    start_plugin: StartPlugin,
    pod_resources: PodResourcesSim,
) -> None:
    """Kubelet already counts it as allocated: nothing to protect, and no polling needed."""
    x, y = node.socs[0].pci_address, node.socs[1].pci_address
    pod_resources.set_held([ContainerDevices("ns", "p", "c", QAIC, (x,))])
    plugin = await start_plugin(QAIC_POD_RESOURCES_SOCKET=str(pod_resources.socket), **FAST)
    await kubelet.wait_devices(QAIC, healthy=10)
    # Two resync ticks at least (a dbc-state change is seen only by the rescan) ...
    node.set_dbc_state(y, 9, 3)
    await kubelet.wait_devices(QAIC, healthy=9, unhealthy=1, timeout=5)
    node.set_dbc_state(y, 9, 5)
    await kubelet.wait_devices(QAIC, healthy=10, timeout=5)
    # ... and PodResources was asked once, at start.
    assert pod_resources.calls == 1
    assert plugin.events("soc_held_elsewhere") == []


async def test_pod_resources_unavailable_is_said_once_and_nothing_is_held(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin(**FAST)  # node_env points at a socket nobody serves
    await kubelet.wait_devices(QAIC, healthy=10)
    (warned,) = plugin.events("pod_resources_unavailable")
    assert warned["level"] == "warning"
    assert "no such socket" in warned["error"]
