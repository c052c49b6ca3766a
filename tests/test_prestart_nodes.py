"""After a driver reload, a restarted container must not get another SoC's device node.

Kubelet reuses the checkpointed Allocate reply when a container restarts; the plugin is asked
only PreStartContainer, which it always requests and which compares the reply in kubelet's
checkpoint with the SoC's device node now.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio

from qaic_device_plugin.kubelet.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointUnreadable,
    IssuedAllocations,
    parse_checkpoint,
)
from qaic_device_plugin.kubelet.types import ContainerAllocation, DeviceSpec
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.pods import Pods
from qaic_device_plugin.sim.process import PluginProcess

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"

# A ContainerAllocateResponse (QAIC_VISIBLE_DEVICES=0,1; accel1 and accel2, rw), base64 as Go's
# encoding/json writes a []byte.
ALLOC_RESP = (
    "ChsKFFFBSUNfVklTSUJMRV9ERVZJQ0VTEgMwLDEaKgoRL2Rldi9hY2NlbC9hY2NlbDESES9kZXYvYWNjZWwvYWNj"
    "ZWwxGgJydxoqChEvZGV2L2FjY2VsL2FjY2VsMhIRL2Rldi9hY2NlbC9hY2NlbDIaAnJ3"
)


def test_parses_kubelets_checkpoint_layout() -> None:
    """Both DeviceIDs forms (per NUMA node since 1.20, a list before); a bad entry is
    skipped, not fatal; a file in another layout is unreadable."""
    doc = {
        "Data": {
            "PodDeviceEntries": [
                {
                    "PodUID": "uid-1",
                    "ContainerName": "main",
                    "ResourceName": QAIC,
                    "DeviceIDs": {"0": ["0000:35:00.0"], "1": ["0000:b5:00.0"]},
                    "AllocResp": ALLOC_RESP,
                },
                {
                    "PodUID": "uid-2",
                    "ContainerName": "old",
                    "ResourceName": QAIC,
                    "DeviceIDs": ["0000:36:00.0"],
                    "AllocResp": ALLOC_RESP,
                },
                {
                    "PodUID": "uid-3",
                    "ContainerName": "x",
                    "ResourceName": QAIC,
                    "DeviceIDs": {"0": ["a"]},
                    "AllocResp": "%%% not base64",
                },
            ],
            "RegisteredDevices": {QAIC: ["0000:35:00.0", "0000:36:00.0", "0000:b5:00.0"]},
        },
        "Checksum": 2741398923,
    }
    entries = parse_checkpoint(json.dumps(doc))
    assert [(e.pod_uid, e.container_name) for e in entries] == [("uid-1", "main"), ("uid-2", "old")]
    assert entries[0].device_ids == {"0000:35:00.0", "0000:b5:00.0"}
    assert entries[1].device_ids == {"0000:36:00.0"}
    alloc = entries[0].allocation
    assert [d.host_path for d in alloc.devices] == ["/dev/accel/accel1", "/dev/accel/accel2"]
    assert alloc.envs == {"QAIC_VISIBLE_DEVICES": "0,1"}
    for bad in ("", "{}", '{"Data": {"PodDeviceEntries": 3}}', "[]"):
        with pytest.raises(CheckpointUnreadable):
            parse_checkpoint(bad)
    assert base64.b64decode(ALLOC_RESP)  # the literal is what the test says it is


def test_issued_falls_back_to_memory(tmp_path: Path) -> None:
    issued = IssuedAllocations(tmp_path / CHECKPOINT_FILE, limit=2)
    mine = ContainerAllocation(devices=[DeviceSpec("/dev/accel/accel4", "/dev/accel/accel4")])
    issued.record(QAIC, ["b", "a"], mine)
    got = issued.lookup(QAIC, ["a", "b"])  # no checkpoint file
    assert (got.source, got.allocations) == ("memory", (mine,))
    assert issued.lookup(QAIC, ["a"]).source == "none"
    issued.record(QAIC, ["c"], mine)
    issued.record(QAIC, ["d"], mine)  # over the limit: the oldest goes
    assert issued.lookup(QAIC, ["a", "b"]).source == "none"


def swap_order(node: FakeNode, a: str, b: str) -> list[str]:
    """A probe order after which `a` and `b` swap device nodes and every other SoC keeps its."""
    order = [s.pci_address for s in sorted(node.socs, key=lambda s: s.accel_index)]
    i, j = order.index(a), order.index(b)
    order[i], order[j] = b, a
    return order


async def refused(pods: Pods, pod: str) -> str:
    with pytest.raises(aio.AioRpcError) as err:
        await pods.start(pod, "main")
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    return err.value.details() or ""


async def test_restarted_container_never_gets_another_socs_node(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin()  # QAIC_PRESTART_CHECK left at its default (false)
    await kubelet.wait_devices(QAIC, healthy=10)
    assert kubelet.view(QAIC).options.pre_start_required
    pods = Pods(kubelet)
    a, b = (s.pci_address for s in node.socs[:2])
    old_a, old_b = node.soc(a).accel_index, node.soc(b).accel_index
    resp = await pods.admit("pod-a", "main", QAIC, [a])
    assert [x.host_path for x in resp.devices] == [f"/dev/accel/accel{old_a}"]
    await pods.admit("pod-b", "main", QAIC, [b])
    await pods.start("pod-a", "main")  # an unchanged node restarts fine
    assert pods.pre_starts == 3

    node.reload_driver(swap_order(node, a, b))
    assert (node.soc(a).accel_index, node.soc(b).accel_index) == (old_b, old_a)
    why = await refused(pods, "pod-a")
    assert "changed since allocation" in why and "recreate the pod" in why
    assert f"/dev/accel/accel{old_a}" in why and f"/dev/accel/accel{old_b}" in why
    await refused(pods, "pod-b")

    # A plugin restart forgets what it returned; kubelet's checkpoint still says it.
    await plugin.stop()
    await start_plugin()
    await kubelet.wait_registered(QAIC, count=2)
    await refused(pods, "pod-a")

    # A fresh allocation (the pod recreated) gets the current node and starts.
    pods.remove("pod-a")
    resp = await pods.admit("pod-a2", "main", QAIC, [a])
    assert [x.host_path for x in resp.devices] == [f"/dev/accel/accel{old_b}"]
    await pods.start("pod-a2", "main")


async def test_unreadable_checkpoint_falls_back_to_what_the_process_returned(
    node: FakeNode, kubelet: KubeletSim, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin()
    await kubelet.wait_devices(QAIC, healthy=10)
    pods = Pods(kubelet)
    a, b = (s.pci_address for s in node.socs[2:4])
    await pods.admit("pod-a", "main", QAIC, [a])
    node.reload_driver(swap_order(node, a, b))
    pods.path.write_text("not json\n")
    why = await refused(pods, "pod-a")
    assert "changed since allocation" in why
    assert len(plugin.events("checkpoint_unreadable")) == 1
