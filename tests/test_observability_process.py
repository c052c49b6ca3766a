"""Metrics, /healthz, the NFD feature file and CDI through the real process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from http_probe import free_port, http_get, samples

from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]
ULTRA = "qualcomm.com/qaic-ultra"


async def test_metrics_healthz_nfd_and_cdi(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin, tmp_path: Path
) -> None:
    port = free_port()
    nfd, cdi = tmp_path / "features.d", tmp_path / "cdi"
    nfd.mkdir()
    await start_plugin(
        QAIC_SKU_BASED_RESOURCE_ENABLED="1",
        QAIC_METRICS_PORT=str(port),
        QAIC_METRICS_ADDRESS="127.0.0.1",
        QAIC_NFD_FEATURES_DIR=str(nfd),
        QAIC_CDI_ENABLED="true",
        QAIC_CDI_DIR=str(cdi),
    )
    view = await kubelet.wait_devices(ULTRA, healthy=8)
    assert await http_get(port, "/healthz") == (200, "ok\n")

    status, text = await http_get(port, "/metrics")
    assert status == 200
    socs = samples(text, "qaic_socs")
    assert socs[(("health", "healthy"), ("resource", ULTRA))] == 8
    assert socs[(("health", "healthy"), ("resource", "qualcomm.com/qaic-pro"))] == 1

    # NFD: labels that match the node
    labels = dict(
        line.split("=", 1)
        for line in (nfd / "qaic").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert labels["qualcomm.com/qaic.present"] == "true"
    assert labels["qualcomm.com/qaic.socs"] == "10"
    assert labels["qualcomm.com/qaic.cards"] == "4"
    assert labels["qualcomm.com/qaic.sku.ultra.socs"] == "8"

    # CDI: a spec naming every SoC, and Allocate returns its names next to the DeviceSpecs
    spec = json.loads((cdi / "qualcomm.com-qaic.json").read_text())
    assert spec["kind"] == "qualcomm.com/qaic"
    assert len(spec["devices"]) == 10
    pci = view.healthy[0]
    resp = await kubelet.allocate(ULTRA, [pci])
    c = resp.container_responses[0]
    assert [d.name for d in c.cdi_devices] == [f"qualcomm.com/qaic={pci.replace(':', '-')}"]
    assert len(c.devices) == 1

    # a health flip and a kubelet restart show up in the counters
    node.remove_device_node(pci)
    await kubelet.wait_devices(ULTRA, healthy=7, unhealthy=1)
    node.restore_device_node(pci)
    await kubelet.wait_devices(ULTRA, healthy=8)
    await kubelet.restart()
    await kubelet.wait_registered(ULTRA, count=2)
    await kubelet.wait_registered("qualcomm.com/qaic-pro", count=2)
    await kubelet.wait_registered("qualcomm.com/qaic-std", count=2)
    # kubelet records a Register on receipt; the plugin counts it when the reply arrives, a
    # moment later: await all three re-registrations in /metrics (bounded) before reading it.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        _, text = await http_get(port, "/metrics")
        re_regs = samples(text, "qaic_registrations_total")
        if sum(v for k, v in re_regs.items() if ("kind", "re") in k) >= 3:
            break
        assert loop.time() < deadline, text
        await asyncio.sleep(0.05)
    trans = samples(text, "qaic_health_transitions_total")
    assert trans[(("signal", "device-node"), ("to", "unhealthy"))] == 1
    assert trans[(("signal", "device-node"), ("to", "healthy"))] == 1
    regs = samples(text, "qaic_registrations_total")
    assert regs[(("kind", "re"), ("resource", ULTRA))] == 1
    assert samples(text, "qaic_allocations_total")[(("resource", ULTRA),)] == 1
    assert samples(text, "qaic_kubelet_reaction_seconds_count")[()] == 3
