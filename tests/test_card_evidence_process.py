"""Issue 13 items 2, 4 and 8 through the real process and the kubelet simulator: card groupings
and SKUs need firmware evidence, qaic-util's absence is said once, and qaic-util's QID map wins.

The node of the issue: three Standard and one Pro card behind one server-board PCIe switch.
In sysfs that is four SoCs behind one switch, exactly what an Ultra card looks like.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from http_probe import free_port
from prometheus_client.parser import text_string_to_metric_families

from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import CardSpec, FakeNode, runtime_decimal_order
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"
ULTRA, STD, PRO = "qualcomm.com/qaic-ultra", "qualcomm.com/qaic-std", "qualcomm.com/qaic-pro"

# What the dynamic loader prints when the image lacks one of qaic-util's libraries.
NO_LIBRARY = """echo "$0: error while loading shared libraries: libpci.so.3: cannot open shared \
object file: No such file or directory" >&2
exit 127
"""


@pytest.fixture
def switch_node(tmp_path: Path) -> FakeNode:
    """3 Std + 1 Pro behind one platform switch, and one real Ultra card on its own port."""
    cards = [CardSpec(Sku.STANDARD, platform_switch=0)] * 3 + [CardSpec(Sku.PRO, platform_switch=0)]
    node = FakeNode(tmp_path / "node", [*cards, CardSpec(Sku.ULTRA)])
    node.write()
    return node


def behind_switch(node: FakeNode) -> list[str]:
    return [s.pci_address for s in node.socs if s.sku in (Sku.STANDARD, Sku.PRO)]


def ultra(node: FakeNode) -> list[str]:
    return [s.pci_address for s in node.socs if s.sku is Sku.ULTRA]


def recording_wrapper(path: Path, body: str) -> Path:
    """A qaic-util stand-in at `path` that appends a byte to `calls` beside it on every run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('#!/bin/sh\necho x >> "$(dirname "$0")/calls"\n' + body)
    path.chmod(0o755)
    return path.with_name("calls")


async def runs_reach(calls: Path, n: int, timeout: float = 10.0) -> None:
    """Wait until the stand-in ran `n` times (nothing announces a run: poll the file)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (calls.exists() and len(calls.read_bytes()) // 2 >= n):
        if loop.time() > deadline:
            raise TimeoutError(f"qaic-util did not run {n} times within {timeout} s")
        await asyncio.sleep(0.02)


async def cross_card_total(port: int) -> dict[str, float]:
    """qaic_cross_card_total{rpc="allocate"} per resource, from the live /metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    text = (await reader.read()).decode().partition("\r\n\r\n")[2]
    writer.close()
    return {
        s.labels["resource"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "qaic_cross_card_total" and s.labels["rpc"] == "allocate"
    }


async def test_issue_repro_no_qaic_util_sku_mode_require(
    switch_node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, tmp_path: Path
) -> None:
    """The issue's scenario: no usable qaic-util (its shared library is missing), SKU mode,
    require. Before: `qaic-ultra` listed the four SoCs of four cards and a 4-SoC job was
    admitted, uncounted. Now nothing is offered as Ultra, the 4-SoC set is refused with the
    reason and the fix, it is counted, and the missing qaic-util is said once."""
    tool = tmp_path / "sdk" / "qaic-util"
    calls = recording_wrapper(tool, NO_LIBRARY)
    port = free_port()
    plugin = await start_plugin(
        switch_node,
        QAIC_UTIL_PATH=str(tool),
        QAIC_SKU_BASED_RESOURCE_ENABLED="true",
        QAIC_MULTI_SOC_POLICY="require",
        QAIC_HEALTH_POLL_SECONDS="0.05",
        QAIC_METRICS_PORT=str(port),
        QAIC_METRICS_ADDRESS="127.0.0.1",
    )
    # Without firmware evidence every SoC is a Standard guess, the real Ultra card's too.
    std = await kubelet.wait_devices(STD, healthy=8)
    assert set(std.healthy) == {s.pci_address for s in switch_node.socs}
    assert ULTRA not in kubelet.resources and PRO not in kubelet.resources

    group = behind_switch(switch_node)
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate(STD, group)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    why = err.value.details() or ""
    assert "no firmware evidence" in why and "QAIC_MULTI_SOC_POLICY=require" in why
    assert "qaic-util" in why and "QAIC_SKU_OVERRIDES" in why
    assert (await cross_card_total(port))[STD] == 1
    # one SoC is no card claim: admitted
    await kubelet.allocate(STD, group[:1])

    # qaic-util is looked for at every poll, and its absence said once.
    await runs_reach(calls, 5)
    (said,) = plugin.events("qaic_util_unusable")
    assert said["level"] == "warning"
    reasons = {t["path"]: t["reason"] for t in said["tried"]}
    assert "libpci.so.3: cannot open shared object file" in reasons[str(tool)]
    assert "/opt/qti-aic/tools/qaic-util" in reasons
    assert "Status health signal and PreStart Status check are off" in said["msg"]
    guessed = plugin.events("card_guessed")
    assert [sorted(c) for c in guessed[-1]["cards"].values()] == [sorted(group), ultra(switch_node)]


async def test_prefer_still_packs_a_guessed_card_and_counts_it(
    switch_node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin(switch_node, qaic_util=False)
    view = await kubelet.wait_devices(QAIC, healthy=8)
    group = behind_switch(switch_node)
    # the guessed grouping still guides placement: a 4-SoC job lands on one candidate card
    pick = await kubelet.preferred(QAIC, view.healthy, [], 4)
    assert sorted(pick) in (sorted(group), ultra(switch_node))
    await kubelet.allocate(QAIC, group)  # prefer admits it, and says why it is unproven
    (event,) = plugin.events("unproven_card")
    assert sorted(event["socs"]) == sorted(group) and event["level"] == "warning"


async def test_qaic_util_answer_wins_over_the_pci_tree(
    switch_node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    """With qaic-util, a SoC whose Sku Type is not Ultra is its own card whatever the PCI tree
    says, and the Ultra SoCs behind their on-card switch are one card, proven."""
    await start_plugin(
        switch_node, QAIC_SKU_BASED_RESOURCE_ENABLED="1", QAIC_MULTI_SOC_POLICY="require"
    )
    await kubelet.wait_devices(STD, healthy=3)
    await kubelet.wait_devices(PRO, healthy=1)
    await kubelet.wait_devices(ULTRA, healthy=4)
    stds = [s.pci_address for s in switch_node.socs if s.sku is Sku.STANDARD]
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate(STD, stds[:2])
    assert "span cards" in (err.value.details() or "")  # two cards, not one guessed card
    resp = await kubelet.allocate(ULTRA, ultra(switch_node))
    assert len(resp.container_responses[0].devices) == 4


async def test_overrides_vouch_for_a_card_without_qaic_util(
    switch_node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    overrides = ",".join(f'"{p}": "ultra"' for p in ultra(switch_node))
    plugin = await start_plugin(
        switch_node,
        qaic_util=False,
        QAIC_SKU_BASED_RESOURCE_ENABLED="1",
        QAIC_MULTI_SOC_POLICY="require",
        QAIC_SKU_OVERRIDES="{" + overrides + "}",
    )
    await kubelet.wait_devices(ULTRA, healthy=4)
    await kubelet.allocate(ULTRA, ultra(switch_node))
    assert {e["source"] for e in plugin.events("sku") if e["sku"] == "ultra"} == {"override"}


async def test_qaic_util_becoming_usable_is_noticed(
    switch_node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    switch_node.set_qaic_util_mode("nolib")
    plugin = await start_plugin(
        switch_node, QAIC_SKU_BASED_RESOURCE_ENABLED="1", QAIC_HEALTH_POLL_SECONDS="0.1"
    )
    await kubelet.wait_devices(STD, healthy=8)
    assert len(plugin.events("qaic_util_unusable")) == 1
    switch_node.set_qaic_util_mode(None)  # e.g. the SDK's libraries installed on the host
    await kubelet.wait_devices(PRO, healthy=1)
    await kubelet.wait_devices(ULTRA, healthy=4)
    await kubelet.wait_devices(STD, healthy=3)
    (found,) = plugin.events("qaic_util_found")
    assert found["path"] == str(switch_node.qaic_util_path)


async def test_qaic_util_qid_map_wins_over_ours(
    kubelet: KubeletSim, start_plugin: StartPlugin, tmp_path: Path
) -> None:
    """Item 8: a qaic-util that numbers SoCs differently (here as the open-source runtime's
    decimal-text sort does once a bus number reaches 0x64): QAIC_VISIBLE_DEVICES carries its
    QIDs, and one warning names both maps."""
    # three Ultra cards put SoCs on buses 0x03-0x12; the Standard card on NUMA node 1 sits
    # at bus 0x81 (decimal 129), which the decimal text sorts between buses 12 and 13
    node = FakeNode(tmp_path / "n", [CardSpec(Sku.ULTRA)] * 3 + [CardSpec(Sku.STANDARD, 1)])
    node.write()
    pcis = [s.pci_address for s in node.socs]
    order = runtime_decimal_order(pcis)
    assert order != pcis
    theirs = {pci: qid for qid, pci in enumerate(order)}
    node.set_qaic_util_qid_order(order)
    calls = recording_wrapper(
        node.root / "util" / "qaic-util", f'exec {node.qaic_util_path} "$@"\n'
    )
    plugin = await start_plugin(
        node, QAIC_UTIL_PATH=str(calls.with_name("qaic-util")), QAIC_HEALTH_POLL_SECONDS="0.05"
    )
    await kubelet.wait_devices(QAIC, healthy=13)
    moved = [s for s in node.socs if theirs[s.pci_address] != s.qid]
    resp = await kubelet.allocate(QAIC, [s.pci_address for s in moved[:2]])
    want = ",".join(str(q) for q in sorted(theirs[s.pci_address] for s in moved[:2]))
    assert resp.container_responses[0].envs["QAIC_VISIBLE_DEVICES"] == want
    await runs_reach(calls, 5)  # said once, not at every poll
    assert not plugin.events("qaic_util_failed")
    (said,) = plugin.events("qid_mismatch")
    assert said["level"] == "warning"
    assert said["ours"] == {s.pci_address: s.qid for s in moved}
    assert said["qaic_util"] == {s.pci_address: theirs[s.pci_address] for s in moved}
