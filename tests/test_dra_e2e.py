"""DRA mode end to end: the real console script against a real kube-apiserver + etcd
(e2e/apiserver.py), a simulated node and the kubelet stand-in. Publishes ResourceSlices,
follows health, and prepares a claim whose allocation is written through the API (as the
scheduler would)."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from http_probe import free_port, http_get, samples, wait_http
from lightkube import AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node
from lightkube.resources.resource_v1 import ResourceClaim, ResourceClaimStatus, ResourceSlice
from lightkube.types import PatchType

from e2e.apiserver import ApiServer, find_binaries
from qaic_device_plugin.dra.backend import DRIVER_NAME, TAINT_UNHEALTHY, device_name
from qaic_device_plugin.kubelet.api.dra_health_v1 import api_pb2 as health_pb
from qaic_device_plugin.kubelet.dra.types import ClaimRef
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.sim.dra_kubelet import DraKubeletSim
from qaic_device_plugin.sim.node import CardSpec, FakeNode, FakeSoc
from qaic_device_plugin.sim.process import PluginProcess, node_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_binaries() is None, reason="kube-apiserver/etcd not built"),
]
NODE = "node-1"
ADMIN_NS = "qaic-admin"


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(config=KubeConfig.from_file(api.kubeconfig))
    yield c
    await c.close()


def dra_env(api: ApiServer, node: FakeNode, dirs: Path, metrics_port: int = 0) -> dict[str, str]:
    return {
        **node_env(node, dirs / "dp", metrics_port=metrics_port),
        "QAIC_METRICS_ADDRESS": "127.0.0.1",
        "QAIC_ALLOCATION_API": "dra",
        "NODE_NAME": NODE,
        "QAIC_DRA_PLUGINS_DIR": str(dirs / "plugins"),
        "QAIC_DRA_REGISTRY_DIR": str(dirs / "registry"),
        "QAIC_KUBECONFIG": str(api.kubeconfig),
        "QAIC_CDI_DIR": str(dirs / "cdi"),
        "QAIC_UDEV_ENABLED": "false",
    }


@pytest.fixture
async def running(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path
) -> AsyncIterator[tuple[PluginProcess, DraKubeletSim]]:
    await client.apply(Node(metadata=ObjectMeta(name=NODE)), field_manager="test")
    async with (
        DraKubeletSim(dirs / "registry") as kubelet,
        PluginProcess(dra_env(api, node, dirs), tmp_path / "plugin.log") as proc,
    ):
        try:
            await kubelet.wait_registered(DRIVER_NAME, timeout=20)
            yield proc, kubelet
        finally:
            print(proc.log_text()[-3000:])
    async for s in client.list(ResourceSlice):
        assert s.metadata is not None and s.metadata.name is not None
        await client.delete(ResourceSlice, s.metadata.name)


async def wait_devices(
    client: AsyncClient, ok: Callable[[dict[str, Any]], bool], timeout: float = 20.0
) -> dict[str, Any]:
    """Follow a watch on our ResourceSlices until the newest pool generation's SoC devices
    satisfy `ok` (whole cards and parts of cards, dra/cards.py, are left out)."""
    slices: dict[str, Any] = {}

    async def follow() -> dict[str, Any]:
        async for op, s in client.watch(ResourceSlice, fields={"spec.driver": DRIVER_NAME}):
            slices.pop(s.metadata.name, None)
            if op != "DELETED":
                slices[s.metadata.name] = s.to_dict()
            gen = max((x["spec"]["pool"]["generation"] for x in slices.values()), default=0)
            newest = [x for x in slices.values() if x["spec"]["pool"]["generation"] == gen]
            devices = {d["name"]: d for x in newest for d in x["spec"].get("devices", [])
                       if d["attributes"].get("type", {"string": "soc"}) == {"string": "soc"}}
            if newest and ok(devices):
                return devices
        raise AssertionError("watch ended")

    return await asyncio.wait_for(follow(), timeout)


async def test_slices_claim_prepare_and_health(
    running: tuple[PluginProcess, DraKubeletSim], client: AsyncClient, node: FakeNode, dirs: Path
) -> None:
    proc, kubelet = running
    socs = node.socs
    devices = await wait_devices(client, lambda d: len(d) == len(socs))
    first = socs[0]
    attrs = devices[device_name(first.pci_address)]["attributes"]
    assert attrs == {
        "type": {"string": "soc"},
        "cardID": {"string": first.card_id},
        "qid": {"int": first.qid},
        "sku": {"string": first.sku.value},
        "resource.kubernetes.io/pciBusID": {"string": first.pci_address},
        "resource.kubernetes.io/numaNode": {"int": first.numa_node},
    }
    slice_ = (await client.get(ResourceSlice, f"{NODE}-{DRIVER_NAME}-0")).to_dict()
    assert slice_["spec"]["nodeName"] == NODE and slice_["spec"]["pool"]["name"] == NODE
    assert slice_["metadata"]["ownerReferences"][0]["kind"] == "Node"

    # A 4-SoC claim on one Ultra card, allocated as the scheduler would write it.
    card = [s for s in socs if s.card_id == socs[0].card_id]
    assert len(card) == 4
    claim = ResourceClaim.from_dict(
        {
            "metadata": {"name": "four", "namespace": "default"},
            "spec": {
                "devices": {
                    "requests": [
                        {"name": "socs", "exactly": {"deviceClassName": DRIVER_NAME, "count": 4}}
                    ],
                    "constraints": [
                        {"requests": ["socs"], "matchAttribute": f"{DRIVER_NAME}/cardID"}
                    ],
                }
            },
        }
    )
    created = await client.create(claim)
    assert created.metadata is not None and created.metadata.uid is not None
    uid = created.metadata.uid
    results = [
        {
            "request": "socs",
            "driver": DRIVER_NAME,
            "pool": NODE,
            "device": device_name(s.pci_address),
        }
        for s in card
    ]
    await client.patch(  # the status subresource, where the scheduler writes allocations
        ResourceClaimStatus,
        "four",
        {"status": {"allocation": {"devices": {"results": results}}}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )

    ref = ClaimRef("default", uid, "four")
    resp = await kubelet.prepare(DRIVER_NAME, [ref])
    got = resp.claims[uid]
    assert got.error == ""
    assert sorted(d.device_name for d in got.devices) == sorted(r["device"] for r in results)
    assert all(d.pool_name == NODE and list(d.request_names) == ["socs"] for d in got.devices)
    spec_path = dirs / "cdi" / f"{DRIVER_NAME}-claim_{uid}.json"
    spec = json.loads(spec_path.read_text())
    nodes = sorted(n["path"] for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"])
    assert nodes == sorted(f"/dev/accel/accel{s.accel_index}" for s in card)
    qids = ",".join(str(s.qid) for s in sorted(card, key=lambda s: s.qid))
    assert spec["containerEdits"]["env"] == [f"QAIC_VISIBLE_DEVICES={qids}"]
    ids = sorted(i for d in got.devices for i in d.cdi_device_ids)
    assert ids == sorted(f"{DRIVER_NAME}/claim={d['name']}" for d in spec["devices"])

    # Health: a SoC whose device node vanishes is tainted, and untainted when it returns.
    bad = device_name(socs[-1].pci_address)
    node.remove_device_node(socs[-1].pci_address)
    tainted = await wait_devices(client, lambda d: bool(d.get(bad, {}).get("taints")))
    assert tainted[bad]["taints"][0]["key"] == f"{DRIVER_NAME}/unhealthy"
    assert tainted[bad]["taints"][0]["effect"] == "NoSchedule"
    node.restore_device_node(socs[-1].pci_address)
    await wait_devices(client, lambda d: bad in d and not d[bad].get("taints"))

    un = await kubelet.unprepare(DRIVER_NAME, [ref])
    assert un.claims[uid].error == ""
    assert not spec_path.exists()
    assert proc.returncode is None


async def test_a_hot_added_card_is_published_only_with_the_sku_qaic_util_names(
    running: tuple[PluginProcess, DraKubeletSim], client: AsyncClient, node: FakeNode
) -> None:
    """The Pro SoC that appears is not first published as the Standard that PCIe topology
    alone would guess (a claim for std.* could take it): it waits for qaic-util's answer."""
    await wait_devices(client, lambda d: len(d) == len(node.socs))
    seen: list[str] = []

    def published_pro(devices: dict[str, Any]) -> bool:
        d = devices.get(name)
        if d is not None:
            seen.append(d["attributes"]["sku"]["string"])
        return d is not None and not d.get("taints")

    [pro] = node.add_card(CardSpec(Sku.PRO))
    name = device_name(pro.pci_address)
    devices = await wait_devices(client, published_pro)
    assert devices[name]["attributes"]["sku"] == {"string": "pro"}
    assert set(seen) == {"pro"}, seen


async def test_probes_say_ready_once_registered_and_published_and_metrics_count_socs(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path
) -> None:
    """/healthz, /readyz and /metrics in DRA mode: alive at once; ready only once kubelet has
    registered the driver (its slices are written by then); the SoC gauges as in
    device-plugin mode, under the driver's name."""
    await client.apply(Node(metadata=ObjectMeta(name=NODE)), field_manager="test")
    port = free_port()
    async with PluginProcess(dra_env(api, node, dirs, port), tmp_path / "plugin.log") as proc:
        try:
            assert await wait_http(port, "/healthz", 200) == "ok\n"
            await wait_http(port, "/readyz", 503, contains="not registered with kubelet")
            async with DraKubeletSim(dirs / "registry") as kubelet:
                await kubelet.wait_registered(DRIVER_NAME, timeout=20)
                await wait_http(port, "/readyz", 200)
                await wait_devices(client, lambda d: len(d) == len(node.socs))
                status, text = await http_get(port, "/metrics")
            assert status == 200
            socs = samples(text, "qaic_socs")
            assert socs[(("health", "healthy"), ("resource", DRIVER_NAME))] == len(node.socs)
            assert socs[(("health", "unhealthy"), ("resource", DRIVER_NAME))] == 0
        finally:
            print(proc.log_text()[-3000:])


async def test_kubelet_health_stream_follows_the_node(
    running: tuple[PluginProcess, DraKubeletSim], node: FakeNode
) -> None:
    """dra-health v1 from the real process: every SoC in pool NODE, Healthy; a vanished device
    node turns its SoC Unhealthy with the reason, and back."""
    _, kubelet = running
    assert "v1.DRAResourceHealth" in kubelet.plugins[DRIVER_NAME].versions
    stream = kubelet.watch_health(DRIVER_NAME)

    async def until(ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(20):
            async for msg in stream:
                health = {d.device.device_name: d for d in msg.devices
                          if d.device.device_name.startswith("soc-")}  # not cards, parts
                if ok(health):
                    return health
        raise AssertionError("stream ended")

    health = await until(lambda h: len(h) == len(node.socs))
    assert {d.device.pool_name for d in health.values()} == {NODE}
    assert {d.health for d in health.values()} == {health_pb.HEALTHY}
    bad = node.socs[-1]
    name = device_name(bad.pci_address)
    node.remove_device_node(bad.pci_address)
    health = await until(lambda h: h[name].health == health_pb.UNHEALTHY)
    missing = node.dev_root / "accel" / f"accel{bad.accel_index}"
    assert health[name].message == f"device-node: {missing} is missing"
    node.restore_device_node(bad.pci_address)
    await until(lambda h: h[name].health == health_pb.HEALTHY)
    await stream.aclose()


async def allocated_claim(
    client: AsyncClient, name: str, socs: list[FakeSoc], namespace: str = "default",
    **result: Any,
) -> ClaimRef:
    """A claim for `socs`, allocated through the status subresource as the scheduler writes
    it; `result` adds fields to every result (tolerations, adminAccess)."""
    created = await client.create(ResourceClaim.from_dict({
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": "socs", "exactly": {
            "deviceClassName": DRIVER_NAME, "count": len(socs),
            **({"adminAccess": True} if result.get("adminAccess") else {})}}]}},
    }))
    assert created.metadata is not None and created.metadata.uid is not None
    results = [{"request": "socs", "driver": DRIVER_NAME, "pool": NODE,
                "device": device_name(s.pci_address), **result} for s in socs]
    await client.patch(ResourceClaimStatus, name,
                       {"status": {"allocation": {"devices": {"results": results}}}},
                       namespace=namespace, patch_type=PatchType.MERGE)
    return ClaimRef(namespace, created.metadata.uid, name)


def spec_nodes(dirs: Path, uid: str) -> dict[str, str]:
    """CDI device `<uid>-<device>` of the claim's spec -> its device node."""
    spec = json.loads((dirs / "cdi" / f"{DRIVER_NAME}-claim_{uid}.json").read_text())
    return {d["name"].removeprefix(f"{uid}-"): n["path"]
            for d in spec["devices"] for n in d["containerEdits"]["deviceNodes"]}


def soc_nodes(socs: list[FakeSoc]) -> dict[str, str]:
    return {device_name(s.pci_address): f"/dev/accel/accel{s.accel_index}" for s in socs}


async def test_node_reboot_prepare_again_rebuilds_the_spec_for_the_new_accel_nodes(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path
) -> None:
    """Operator situation: a node reboot, with the real process. The checkpoint (under the
    plugins dir) survives, the CDI dir (a tmpfs) comes back empty, and the qaic driver's
    asynchronous probe hands the card's SoCs other /dev/accel/accelN. The restarted driver
    answers kubelet's repeated prepare with the same devices and CDI IDs, and the spec is
    there again naming the new device nodes; the claim is not read from the API again."""
    await client.apply(Node(metadata=ObjectMeta(name=NODE)), field_manager="test")
    card = [s for s in node.socs if s.card_id == node.socs[0].card_id]
    ref = await allocated_claim(client, "rebooted", card)
    env = dra_env(api, node, dirs)
    async with DraKubeletSim(dirs / "registry") as kubelet:
        async with PluginProcess(env, tmp_path / "before.log") as before_reboot:
            await kubelet.wait_registered(DRIVER_NAME, timeout=20)
            first = (await kubelet.prepare(DRIVER_NAME, [ref])).claims[ref.uid]
            assert first.error == "", before_reboot.log_text()[-3000:]
            assert spec_nodes(dirs, ref.uid) == soc_nodes(card)
        shutil.rmtree(dirs / "cdi")
        node.reload_driver(probe_order=[s.pci_address for s in node.socs])
        moved = [s for s in node.socs if s.card_id == card[0].card_id]
        assert not soc_nodes(moved).items() & soc_nodes(card).items()
        async with PluginProcess(env, tmp_path / "after.log") as after_reboot:
            try:
                await kubelet.wait_registered(DRIVER_NAME, count=2, timeout=20)
                again = (await kubelet.prepare(DRIVER_NAME, [ref])).claims[ref.uid]
                assert again == first
                assert spec_nodes(dirs, ref.uid) == soc_nodes(moved)
                assert after_reboot.events("dra_reprepared")
                assert (await kubelet.unprepare(DRIVER_NAME, [ref])).claims[ref.uid].error == ""
            finally:
                print(after_reboot.log_text()[-3000:])
    await client.delete(ResourceClaim, "rebooted", namespace="default")


async def test_a_claim_tolerating_the_unhealthy_taint_gets_the_unhealthy_soc(
    running: tuple[PluginProcess, DraKubeletSim], client: AsyncClient, node: FakeNode
) -> None:
    """The allocation's tolerations and adminAccess, as a real API server returns them, let
    prepare hand out a tainted SoC; a claim without them is refused naming the SoC."""
    _, kubelet = running
    sick = node.socs[-3:]
    for s in sick:
        node.remove_device_node(s.pci_address)
    names = {device_name(s.pci_address) for s in sick}
    await wait_devices(client, lambda d: all(d.get(n, {}).get("taints") for n in names))
    tolerant = await allocated_claim(client, "tolerant", sick[:1], tolerations=[
        {"key": TAINT_UNHEALTHY, "operator": "Exists", "effect": "NoSchedule"}])
    # adminAccess only in a namespace an administrator labelled for it (DRAAdminAccess, GA)
    await client.apply(Namespace(metadata=ObjectMeta(
        name=ADMIN_NS, labels={"resource.kubernetes.io/admin-access": "true"})),
        field_manager="test")
    admin = await allocated_claim(client, "admin", sick[1:2], ADMIN_NS, adminAccess=True)
    strict = await allocated_claim(client, "strict", sick[2:])
    resp = await kubelet.prepare(DRIVER_NAME, [tolerant, admin, strict])
    assert resp.claims[tolerant.uid].error == ""
    assert resp.claims[admin.uid].error == ""
    error = resp.claims[strict.uid].error
    host = f"/dev/accel/accel{sick[2].accel_index}"
    assert f"SoC {sick[2].pci_address} ({host}) is unhealthy" in error
    assert f"tolerate the taint {TAINT_UNHEALTHY}" in error and str(node.dev_root) not in error
    await kubelet.unprepare(DRIVER_NAME, [tolerant, admin, strict])
    for ref in (tolerant, admin, strict):
        await client.delete(ResourceClaim, ref.name, namespace=ref.namespace)
