"""The driver's ResourceSlices against a real kube-apiserver + etcd (e2e/apiserver.py), from the
real process on a simulated node: put back within a second after kubelet's start-up wipe,
no write while nothing changes, valid on a node with more than 64 SoCs and one unhealthy, for
a 253-character node name, and a refused write visible in /readyz and /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from http_probe import free_port, http_get, samples, wait_http
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from lightkube.resources.resource_v1 import ResourceSlice
from test_dra_e2e import dra_env

from e2e.apiserver import ApiServer, find_binaries
from qaic_device_plugin.dra.backend import DRIVER_NAME, device_name
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.sim.dra_kubelet import DraKubeletSim
from qaic_device_plugin.sim.node import CardSpec, FakeNode
from qaic_device_plugin.sim.process import PluginProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_binaries() is None, reason="kube-apiserver/etcd not built"),
]
NODE = "node-1"
Slices = dict[str, dict[str, Any]]


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(config=KubeConfig.from_file(api.kubeconfig))
    yield c
    async for s in c.list(ResourceSlice):
        assert s.metadata is not None and s.metadata.name is not None
        await c.delete(ResourceSlice, s.metadata.name)
    await c.close()


class Driver:
    """The real process, registered with the kubelet stand-in, its /metrics port known."""

    def __init__(self, proc: PluginProcess, kubelet: DraKubeletSim, port: int) -> None:
        self.proc, self.kubelet, self.port = proc, kubelet, port

    async def metric(self, name: str, **labels: str) -> float:
        status, text = await http_get(self.port, "/metrics")
        assert status == 200
        return samples(text, name).get(tuple(sorted(labels.items())), 0.0)

    async def wait_metric(
        self, name: str, ok: Callable[[float], bool], timeout: float = 20.0, **labels: str
    ) -> float:
        """Poll /metrics until `ok(value)` (nothing announces a counter's change)."""
        async with asyncio.timeout(timeout):
            while True:
                value = await self.metric(name, **labels)
                if ok(value):
                    return value
                await asyncio.sleep(0.05)


@asynccontextmanager
async def start(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path,
    node_name: str = NODE, **env: str,
) -> AsyncIterator[Driver]:
    await client.apply(Node(metadata=ObjectMeta(name=node_name)), field_manager="test")
    port = free_port()
    full = {**dra_env(api, node, dirs, port), "NODE_NAME": node_name, **env}
    async with (
        DraKubeletSim(dirs / "registry") as kubelet,
        PluginProcess(full, tmp_path / "plugin.log") as proc,
    ):
        try:
            await kubelet.wait_registered(DRIVER_NAME, timeout=20)
            yield Driver(proc, kubelet, port)
        finally:
            print(proc.log_text()[-3000:])


@pytest.fixture
async def driver(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path
) -> AsyncIterator[Driver]:
    async with start(api, client, node, dirs, tmp_path) as d:
        yield d


async def stored(client: AsyncClient, node: str = NODE) -> Slices:
    fields = {"spec.driver": DRIVER_NAME, "spec.nodeName": node}
    return {
        s.metadata.name: s.to_dict()
        async for s in client.list(ResourceSlice, fields=fields)
        if s.metadata is not None and s.metadata.name is not None
    }


def devices_of(slices: Slices) -> dict[str, dict[str, Any]]:
    """The SoC devices of the newest complete pool generation ({} while incomplete); whole
    cards and parts of cards (dra/cards.py) are left out."""
    gen = max((s["spec"]["pool"]["generation"] for s in slices.values()), default=0)
    newest = [s for s in slices.values() if s["spec"]["pool"]["generation"] == gen]
    if not newest or len(newest) != newest[0]["spec"]["pool"]["resourceSliceCount"]:
        return {}
    return {d["name"]: d for s in newest for d in s["spec"].get("devices", [])
            if d["attributes"].get("type", {"string": "soc"}) == {"string": "soc"}}


async def until(
    client: AsyncClient, ok: Callable[[Slices], bool], node: str = NODE, timeout: float = 20.0
) -> Slices:
    """Follow a watch on the node's slices until their current set satisfies `ok`."""
    fields = {"spec.driver": DRIVER_NAME, "spec.nodeName": node}
    slices: Slices = {}

    async def follow() -> Slices:
        async for op, s in client.watch(ResourceSlice, fields=fields):
            assert s.metadata is not None and s.metadata.name is not None
            slices.pop(s.metadata.name, None)
            if op != "DELETED":
                slices[s.metadata.name] = s.to_dict()
            if ok(slices):
                return slices
        raise AssertionError("watch ended")

    try:
        return await asyncio.wait_for(follow(), timeout)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s; slices: {sorted(slices)}") from None


async def wipe(api: ApiServer, node: str = NODE) -> None:
    """What kubelet's DRA manager does when it starts (dra_plugin_manager.go,
    wipeResourceSlices): DeleteCollection of every ResourceSlice with spec.nodeName=node."""
    headers = {"Authorization": f"Bearer {api.token}"}
    async with httpx2.AsyncClient(verify=False, headers=headers) as h:
        r = await h.delete(f"{api.url}/apis/resource.k8s.io/v1/resourceslices",
                           params={"fieldSelector": f"spec.nodeName={node}"})
        assert r.status_code == 200, r.text


async def test_kubelet_restart_wipe_is_repaired_within_a_second(
    driver: Driver, client: AsyncClient, api: ApiServer, node: FakeNode, dirs: Path
) -> None:
    """Operator situation: kubelet restarts. The new kubelet registers the driver again and,
    in the background, deletes every ResourceSlice of its node, here after the registration
    (the order a driver that only re-publishes on registration gets wrong). The slices are
    back within a second of the wipe, not at the next resync (60 s)."""
    everything = await until(client, lambda s: len(devices_of(s)) == len(node.socs))
    before = {n: s["metadata"]["uid"] for n, s in everything.items()}
    await wait_http(driver.port, "/readyz", 200)
    await driver.kubelet.__aexit__(None, None, None)  # the old kubelet is gone
    async with DraKubeletSim(dirs / "registry") as restarted:  # the new one finds reg.sock
        await restarted.wait_registered(DRIVER_NAME, timeout=20)
        watching = asyncio.create_task(until(  # back: the same names, re-created (new UIDs)
            client, lambda s: set(s) == set(before) and all(
                s[n]["metadata"]["uid"] != uid for n, uid in before.items())
            and len(devices_of(s)) == len(node.socs), timeout=10))
        t0 = time.monotonic()
        await wipe(api)
        await watching
        took = time.monotonic() - t0
        print(f"slices back {took * 1000:.0f} ms after kubelet's wipe")
        assert took < 1.0
        await wait_http(driver.port, "/readyz", 200)


async def test_resyncs_write_nothing_while_nothing_changes(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path
) -> None:
    """Every resync lists; none writes while the server holds what is wanted (before: one write
    of every slice, and a new generation, per resync). A change then writes the one slice."""
    async with start(
        api, client, node, dirs, tmp_path, QAIC_DRA_SLICE_RESYNC_SECONDS="0.1"
    ) as d:
        await until(client, lambda s: len(devices_of(s)) == len(node.socs))
        first = await stored(client)
        syncs = await d.metric("qaic_dra_slice_syncs_total")
        applies = await d.metric("qaic_dra_slice_writes_total", op="apply")
        await d.wait_metric("qaic_dra_slice_syncs_total", lambda v: v >= syncs + 20)
        again = await stored(client)
        versions = {n: s["metadata"]["resourceVersion"] for n, s in first.items()}
        assert {n: s["metadata"]["resourceVersion"] for n, s in again.items()} == versions
        assert {s["spec"]["pool"]["generation"] for s in again.values()} == {
            s["spec"]["pool"]["generation"] for s in first.values()}
        assert await d.metric("qaic_dra_slice_writes_total", op="apply") == applies

        bad = device_name(node.socs[0].pci_address)
        node.remove_device_node(node.socs[0].pci_address)
        await until(client, lambda s: bool(devices_of(s).get(bad, {}).get("taints")))
        # The counter moves once the write has returned, maybe after the watch saw it.
        after = await d.wait_metric(
            "qaic_dra_slice_writes_total", lambda v: v > applies, timeout=5, op="apply")
        assert after == applies + 1


async def test_more_than_64_socs_with_one_unhealthy_stay_published(
    api: ApiServer, client: AsyncClient, dirs: Path, tmp_path: Path
) -> None:
    """Operator situation: a 17-card Ultra node (68 SoCs) where one SoC goes bad. A v1 slice
    with a tainted device may hold 64 devices; before, the one 68-device slice was refused
    (422) on every write, the server kept the SoC untainted and /readyz said ready. Now the
    taint is published in the slice that holds the SoC, the other slice is not rewritten."""
    big = FakeNode(tmp_path / "node", [CardSpec(Sku.ULTRA, numa_node=i % 4) for i in range(17)])
    big.write()
    async with start(api, client, big, dirs, tmp_path) as d:
        everything = await until(client, lambda s: len(devices_of(s)) == 68)
        # 17 cards of 15 devices (4 SoCs, the card, 10 parts), a card never split: 4 a slice;
        # then the 17 counter sets, 8 a slice
        assert sorted(len(s["spec"].get("devices") or s["spec"]["sharedCounters"])
                      for s in everything.values()) == [1, 8, 8, 15, 60, 60, 60, 60]
        sick = big.socs[-1]
        bad = device_name(sick.pci_address)
        big.remove_device_node(sick.pci_address)
        tainted = await until(client, lambda s: bool(devices_of(s).get(bad, {}).get("taints")))
        assert all(len(s["spec"].get("devices") or ()) <= 64 for s in tainted.values())
        [holder] = [n for n, s in tainted.items()
                    if bad in {x["name"] for x in s["spec"].get("devices") or ()}]
        for name, s in tainted.items():
            same = s["metadata"]["resourceVersion"] == everything[name]["metadata"][
                "resourceVersion"]
            assert same == (name != holder), name
        await wait_http(d.port, "/readyz", 200)
        assert await d.metric("qaic_dra_slice_publish_failures_total", status="422") == 0


async def test_a_253_character_node_name_gets_valid_slice_names(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path
) -> None:
    """Node names may be 253 characters; `<node>-qaic.qualcomm.com-0` then is 273, which the
    server refused: such a node published nothing. Now the slice names fit."""
    long_name = ".".join(["n" * 62] * 4) + ".n"
    assert len(long_name) == 253
    async with start(api, client, node, dirs, tmp_path, node_name=long_name) as d:
        slices = await until(
            client, lambda s: len(devices_of(s)) == len(node.socs), node=long_name)
        assert all(len(n) <= 253 for n in slices)
        s = next(s for s in slices.values() if s["spec"].get("devices"))
        assert s["spec"]["pool"]["name"] == long_name
        assert s["metadata"]["ownerReferences"][0]["name"] == long_name
        await wait_http(d.port, "/readyz", 200)
    await client.delete(Node, long_name)


REFUSE = "qaic-test-refuse-slices"


async def refuse_slice_writes(client: AsyncClient, api: ApiServer) -> None:
    """A ValidatingAdmissionPolicy that denies every ResourceSlice create and update (as a
    misconfigured policy or webhook would); returns once the server enforces it."""
    from lightkube.generic_resource import create_global_resource

    policy = create_global_resource(
        "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies")
    binding = create_global_resource(
        "admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings")
    await client.apply(policy.from_dict({
        "metadata": {"name": REFUSE},
        "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [{
            "apiGroups": ["resource.k8s.io"], "apiVersions": ["*"],
            "operations": ["CREATE", "UPDATE"], "resources": ["resourceslices"]}]},
            "validations": [{"expression": "false", "message": "test refuses slices"}]},
    }), field_manager="test")
    await client.apply(binding.from_dict({
        "metadata": {"name": REFUSE},
        "spec": {"policyName": REFUSE, "validationActions": ["Deny"]},
    }), field_manager="test")
    probe = ResourceSlice.from_dict({
        "metadata": {"name": "probe"},
        "spec": {"driver": "probe.example.com", "nodeName": "probe",
                 "pool": {"name": "probe", "generation": 1, "resourceSliceCount": 1}}})
    async with asyncio.timeout(60):  # the policy is compiled and enforced asynchronously
        while True:
            try:
                await client.create(probe)
            except ApiError as e:
                if "test refuses slices" in str(e):
                    return
                raise
            await client.delete(ResourceSlice, "probe")
            await asyncio.sleep(0.2)


async def test_a_refused_write_shows_in_readyz_and_metrics_until_it_succeeds(
    driver: Driver, client: AsyncClient, api: ApiServer, node: FakeNode
) -> None:
    """Operator situation: an admission policy refuses the driver's writes while its slices
    are gone (kubelet's wipe). /readyz is 503 with the server's reason, /metrics counts the
    failures (status 422) and shows the failing gauge; once writes are accepted again the
    slices are back and both clear. Before, /readyz stayed 200 after the first publish."""
    from lightkube.generic_resource import create_global_resource

    await until(client, lambda s: len(devices_of(s)) == len(node.socs))
    await wait_http(driver.port, "/readyz", 200)
    await refuse_slice_writes(client, api)
    try:
        await wipe(api)
        body = await wait_http(driver.port, "/readyz", 503, contains="test refuses slices")
        assert "ResourceSlices not in place: publishing failed" in body
        assert await driver.metric("qaic_dra_slice_publish_failures_total", status="422") >= 1
        assert await driver.metric("qaic_dra_slice_publish_failing") == 1
    finally:
        for kind, plural in (("ValidatingAdmissionPolicyBinding",
                              "validatingadmissionpolicybindings"),
                             ("ValidatingAdmissionPolicy", "validatingadmissionpolicies")):
            res = create_global_resource("admissionregistration.k8s.io", "v1", kind, plural)
            await client.delete(res, REFUSE)
    await until(client, lambda s: len(devices_of(s)) == len(node.socs), timeout=40)
    await wait_http(driver.port, "/readyz", 200, timeout=20)
    assert await driver.metric("qaic_dra_slice_publish_failing") == 0
