"""Allocation through the real process: topology-aware preferences, the multi-SoC policy,
shares (replicas mapped back to SoCs) and the ListAndWatch size bound."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio

from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import CardSpec, FakeNode
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"
ULTRA = "qualcomm.com/qaic-ultra"
GRPC_MAX_MESSAGE = 4 * 1024 * 1024


def by_card(node: FakeNode) -> dict[str, list[str]]:
    cards: dict[str, list[str]] = {}
    for s in node.socs:
        cards.setdefault(s.card_id, []).append(s.pci_address)
    return cards


async def test_multi_soc_request_lands_on_one_card_and_keeps_whole_cards(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    await start_plugin(QAIC_SKU_BASED_RESOURCE_ENABLED="1")
    view = await kubelet.wait_devices(ULTRA, healthy=8)
    cards = [c for c in by_card(node).values() if len(c) == 4]
    half_used, whole = cards
    available = [d for d in view.healthy if d not in half_used[:2]]
    # 2 SoCs: the half-used card fits exactly; the whole card stays free for a 4-SoC job
    two = await kubelet.preferred(ULTRA, available, [], 2)
    assert sorted(two) == sorted(half_used[2:])
    # 4 SoCs: only the whole card fits
    four = await kubelet.preferred(ULTRA, available, [], 4)
    assert sorted(four) == sorted(whole)
    # 1 SoC: from the most-used card, never breaking the whole one
    one = await kubelet.preferred(ULTRA, available, [], 1)
    assert one[0] in half_used[2:]
    # must_include is honoured and filled from its card first
    must = await kubelet.preferred(ULTRA, view.healthy, [whole[1]], 3)
    assert whole[1] in must and set(must) <= set(whole)


@pytest.mark.parametrize("policy", ["prefer", "require"])
async def test_cross_card_allocate_follows_policy(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, policy: str
) -> None:
    plugin = await start_plugin(QAIC_SKU_BASED_RESOURCE_ENABLED="1", QAIC_MULTI_SOC_POLICY=policy)
    await kubelet.wait_devices(ULTRA, healthy=8)
    a, b = [c for c in by_card(node).values() if len(c) == 4]
    spanning = [a[0], b[0]]
    if policy == "prefer":
        resp = await kubelet.allocate(ULTRA, spanning)
        assert len(resp.container_responses[0].devices) == 2
        logged = plugin.events("cross_card")
        assert logged and sorted(logged[0]["cards"]) == sorted(
            {s.card_id for s in node.socs if s.pci_address in spanning}
        )
    else:
        with pytest.raises(aio.AioRpcError) as err:
            await kubelet.allocate(ULTRA, spanning)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        details = err.value.details() or ""
        for card in {s.card_id for s in node.socs if s.pci_address in spanning}:
            assert card in details
    # a set on one card is always fine
    resp = await kubelet.allocate(ULTRA, a)
    assert len(resp.container_responses[0].devices) == 4


async def test_shares_advertise_replicas_and_map_back(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    await start_plugin(ALLOWED_QAIC_DEVICE_SHARES="3")
    view = await kubelet.wait_devices(QAIC, healthy=30)
    soc = node.socs[0]
    replicas = [d for d in view.healthy if d.startswith(soc.pci_address)]
    assert replicas == [f"{soc.pci_address}::{n}" for n in range(3)]
    assert all(len(d) <= 63 for d in view.health)
    # two replicas of one SoC: one DeviceSpec, one QID
    resp = await kubelet.allocate(QAIC, replicas[:2])
    c = resp.container_responses[0]
    assert [d.host_path for d in c.devices] == [f"/dev/accel/accel{soc.accel_index}"]
    assert c.envs["QAIC_VISIBLE_DEVICES"] == str(soc.qid)
    # preferred allocation spreads over distinct SoCs, least loaded first
    busy = {f"{s.pci_address}::0" for s in node.socs[:5]}
    available = [d for d in view.healthy if d not in busy]
    picked = await kubelet.preferred(QAIC, available, [], 3)
    socs = [d.split("::")[0] for d in picked]
    assert len(set(socs)) == 3
    assert not set(socs) & {s.pci_address for s in node.socs[:5]}
    # health of a SoC applies to all its replicas
    node.remove_device_node(soc.pci_address)
    view = await kubelet.wait_devices(QAIC, healthy=27, unhealthy=3)
    assert view.unhealthy == replicas


async def test_list_and_watch_for_64_socs_x_16_shares_is_far_below_4_mib(
    tmp_path: Path, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    node = FakeNode(tmp_path / "big", [CardSpec(Sku.ULTRA, numa_node=i % 4) for i in range(16)])
    node.write()
    assert len(node.socs) == 64
    await start_plugin(node, ALLOWED_QAIC_DEVICE_SHARES="16")
    view = await kubelet.wait_devices(QAIC, healthy=1024, timeout=30)
    msg = pb.ListAndWatchResponse(
        devices=[
            pb.Device(
                ID=d,
                health=h,
                topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=n) for n in view.numa[d]]),
            )
            for d, h in view.health.items()
        ]
    )
    size = msg.ByteSize()
    assert size < GRPC_MAX_MESSAGE / 50, size  # ~80 KiB: room for 50x more
