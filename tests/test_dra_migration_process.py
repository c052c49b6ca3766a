"""The move from device-plugin mode, as the deployed process lives it: the real
`qaic-device-plugin` console script in DRA mode against a real kube-apiserver + etcd, with
kubelet's PodResources API served by the simulator over a real Unix socket. What the
scheduler and kubelet make of it: tests/e2e/test_migration.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from lightkube.resources.resource_v1 import ResourceSlice
from test_dra_e2e import NODE, allocated_claim, dra_env, wait_devices

from e2e.apiserver import ApiServer, find_binaries
from qaic_device_plugin.dra.backend import DRIVER_NAME, device_name
from qaic_device_plugin.kubelet.podresources import ContainerDevices, ResourceDevices
from qaic_device_plugin.sim.dra_kubelet import DraKubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.podresources import PodResourcesSim
from qaic_device_plugin.sim.process import PluginProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_binaries() is None, reason="kube-apiserver/etcd not built"),
]


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(config=KubeConfig.from_file(api.kubeconfig))
    await c.apply(Node(metadata=ObjectMeta(name=NODE)), field_manager="test")
    yield c
    async for s in c.list(ResourceSlice):
        assert s.metadata is not None and s.metadata.name is not None
        await c.delete(ResourceSlice, s.metadata.name)
    await c.close()


@asynccontextmanager
async def beside_old_plugin(
        api: ApiServer, node: FakeNode, dirs: Path, tmp_path: Path, held: tuple[str, ...] = (),
) -> AsyncIterator[tuple[PodResourcesSim, DraKubeletSim, PluginProcess]]:
    """The driver process registered with kubelet while the old device plugin still serves
    every SoC and a pod of its mode holds `held` (PodResources, as kubelet answers it)."""
    env = {**dra_env(api, node, dirs), "QAIC_POD_RESOURCES_SOCKET": str(dirs / "pr.sock")}
    async with PodResourcesSim(dirs / "pr.sock") as pr:
        if held:
            pr.set_held([ContainerDevices("ml", "old", "main", "qualcomm.com/qaic", held)])
        pr.set_allocatable([ResourceDevices("qualcomm.com/qaic",
                                            tuple(s.pci_address for s in node.socs))])
        async with (DraKubeletSim(dirs / "registry") as kubelet,
                    PluginProcess(env, tmp_path / "plugin.log") as proc):
            try:
                await kubelet.wait_registered(DRIVER_NAME, timeout=20)
                yield pr, kubelet, proc
            finally:
                print(proc.log_text()[-3000:])


async def test_a_held_soc_is_published_once_its_pod_ends(
        api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path,
) -> None:
    """Operator situation: the DRA driver starts on a node where a pod of the device-plugin
    mode holds a SoC and the old device plugin still serves. The driver's first slices
    already leave that SoC out (nothing is ever published and then withdrawn); the plugin
    goes, then the pod: the SoC is published within the 2 s poll and a write, and kubelet
    is not asked again."""
    held = node.socs[-1].pci_address
    async with beside_old_plugin(api, node, dirs, tmp_path, (held,)) as (pr, _, proc):
        others = {device_name(s.pci_address) for s in node.socs} - {device_name(held)}
        first = await wait_devices(client, lambda d: bool(d))
        assert set(first) == others
        pr.set_allocatable([])  # the device plugin's pod is gone
        await pr.wait_calls(pr.calls + 2)  # asked again: still held
        assert set(await wait_devices(client, lambda d: bool(d))) == others
        pr.set_held([])
        t0 = time.monotonic()
        await wait_devices(client, lambda d: device_name(held) in d, timeout=10)
        took = time.monotonic() - t0
        calls = pr.calls  # nothing held or served: kubelet is not asked again
        with pytest.raises(TimeoutError):
            await pr.wait_calls(calls + 1, timeout=5)
    log = proc.log_text()
    assert log.count('"soc_withheld"') == 1 and '"soc_released"' in log
    assert '"device_plugin_gone"' in log
    assert took < 5, took


async def test_a_claim_on_a_soc_the_old_plugin_gave_away_meanwhile_waits_for_it(
        api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path,
) -> None:
    """Operator situation: during the move from device-plugin mode the old plugin still
    serves, and a pod asking qualcomm.com/qaic gets a SoC from it just after the scheduler
    allocated that SoC to a claim (before the driver's next poll withdrew it from the
    slices). The claim's prepare asks kubelet afresh and refuses, naming the SoC and the pod
    that has it, so no SoC goes to two pods; once that pod has ended, kubelet's retry
    prepares the claim."""
    soc = node.socs[0]
    async with beside_old_plugin(api, node, dirs, tmp_path) as (pr, kubelet, _):
        await wait_devices(client, lambda d: device_name(soc.pci_address) in d)
        ref = await allocated_claim(client, "raced", [soc])
        pr.set_held([ContainerDevices("ml", "late", "main", "qualcomm.com/qaic",
                                      (soc.pci_address,))])
        calls = pr.calls
        refused = (await kubelet.prepare(DRIVER_NAME, [ref])).claims[ref.uid].error
        assert pr.calls > calls  # asked at the prepare, not from the last poll
        assert soc.pci_address in refused and "ml/late" in refused, refused
        pr.set_held([])
        again = (await kubelet.prepare(DRIVER_NAME, [ref])).claims[ref.uid]
        assert again.error == ""
        assert [d.device_name for d in again.devices] == [device_name(soc.pci_address)]
