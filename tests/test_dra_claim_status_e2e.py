"""Issue 20.5 and the prepare path's follow-up (c), with the real console script against a real
kube-apiserver + etcd (e2e/apiserver.py), the kubelet stand-in and a fake node. The driver runs
as the stack runs it: the ServiceAccount `qaic-device-plugin` with exactly the stack's
ClusterRole (infra/components/dra_objects.py), through a token bound to a pod on its node
(TokenRequest with a Pod boundObjectRef: the token then names the node, as a DaemonSet pod's
does). So the API server's own checks apply: RBAC on `resourceclaims/status`, and the
per-driver, per-node check on `resourceclaims/driver` for `status.devices`.

- after prepare the claim's `status.devices` says which SoCs it holds (PCI address, QID,
  device node, card, NUMA node) with Ready and Healthy conditions; a SoC going bad and coming
  back is shown there, Ready keeping its transition time;
- the same token may not write the status of a claim allocated on another node, and each
  new rule is needed (without it the write is refused);
- shared SoCs (ALLOWED_QAIC_DEVICE_SHARES): the API server keeps what the driver publishes
  (and the stack's preflight finds it served); two claims allocated shares of one SoC are
  both prepared, each status entry under its own shareID;
- operator situation: the qaic driver is reloaded on a running node (no reboot): the SoCs
  come back at other /dev/accel numbers and kubelet sends no prepare, yet the CDI spec of a
  prepared claim names the new node, as a restarting container needs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod, ServiceAccount, ServiceAccountToken
from lightkube.resources.rbac_authorization_v1 import ClusterRole, ClusterRoleBinding
from lightkube.resources.resource_v1 import ResourceClaim, ResourceClaimStatus, ResourceSlice
from lightkube.types import PatchType

from e2e.apiserver import ApiServer, find_binaries
from infra.cluster_apis import probe
from infra.components.dra_objects import cluster_role_rules
from infra.config import load_settings
from qaic_device_plugin.dra.backend import DRIVER_NAME, cdi_spec_path, device_name
from qaic_device_plugin.kubelet.dra.types import ClaimRef
from qaic_device_plugin.sim.dra_kubelet import DraKubeletSim
from qaic_device_plugin.sim.node import FakeNode, FakeSoc
from qaic_device_plugin.sim.process import PluginProcess, node_env

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_binaries() is None, reason="kube-apiserver/etcd not built"),
]
NODE = "node-1"
SYSTEM = "qaic-system"
SA = "qaic-device-plugin"


@pytest.fixture
async def client(api: ApiServer) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(config=KubeConfig.from_file(api.kubeconfig))
    yield c
    await c.close()


def camel(rule: dict[str, Any]) -> dict[str, Any]:
    """A pulumi-kubernetes PolicyRule input (snake_case keys) as the API spells it."""
    names = {"api_groups": "apiGroups", "resource_names": "resourceNames"}
    return {names.get(k, k): v for k, v in rule.items()}


async def ensure(client: AsyncClient, obj: Any) -> Any:
    try:
        return await client.create(obj)
    except ApiError as e:
        if e.status.code != 409:
            raise
        return await client.get(type(obj), obj.metadata.name, namespace=obj.metadata.namespace)


async def bound_token(client: AsyncClient, sa: str, node: str,
                      rules: list[dict[str, Any]]) -> str:
    """A token of ServiceAccount `sa` (with a ClusterRole of `rules`) bound to a pod on `node`,
    as kubelet mounts one into a DaemonSet pod."""
    await ensure(client, Namespace(metadata=ObjectMeta(name=SYSTEM)))
    await ensure(client, Node(metadata=ObjectMeta(name=node)))
    await ensure(client, ServiceAccount(metadata=ObjectMeta(name=sa, namespace=SYSTEM)))
    role = f"{sa}-{node}"
    await client.apply(ClusterRole.from_dict({"metadata": {"name": role}, "rules": rules}),
                       field_manager="test", force=True)
    await client.apply(ClusterRoleBinding.from_dict({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": SYSTEM}]}),
        field_manager="test", force=True)
    pod = await ensure(client, Pod.from_dict({
        "metadata": {"name": f"{sa}-{node}", "namespace": SYSTEM},
        "spec": {"nodeName": node, "serviceAccountName": sa,
                 "containers": [{"name": "driver", "image": "driver:1"}]}}))
    request = ServiceAccountToken.from_dict({
        "metadata": {"name": sa, "namespace": SYSTEM},
        "spec": {"expirationSeconds": 3600, "boundObjectRef": {
            "kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name,
            "uid": pod.metadata.uid}}})
    got = await client.create(request, sa, namespace=SYSTEM)
    return str(got.status.token)


def kubeconfig(api: ApiServer, token: str, path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: driver\n"
        f"clusters:\n- name: e2e\n  cluster:\n    server: {api.url}\n"
        "    insecure-skip-tls-verify: true\n"
        f"users:\n- name: driver\n  user:\n    token: {token}\n"
        "contexts:\n- name: driver\n  context:\n    cluster: e2e\n    user: driver\n")
    return path


async def allocated_claim(client: AsyncClient, name: str, node: str, *socs: FakeSoc,
                          share: str | None = None) -> ClaimRef:
    """A claim allocated to `socs` on `node` as the scheduler writes it (the node selector
    is what the API server's associated-node check reads); `share`: one share of each."""
    created = await client.create(ResourceClaim.from_dict({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "socs", "exactly": {
            "deviceClassName": DRIVER_NAME, "count": len(socs)}}]}}}))
    results: list[dict[str, Any]] = [{"request": "socs", "driver": DRIVER_NAME, "pool": node,
                                      "device": device_name(s.pci_address)} for s in socs]
    if share:
        for r in results:
            r |= {"shareID": share, "consumedCapacity": {f"{DRIVER_NAME}/shares": "1"}}
    await client.patch(ResourceClaimStatus, name, {"status": {"allocation": {
        "devices": {"results": results},
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}},
        namespace="default", patch_type=PatchType.MERGE)
    return ClaimRef("default", created.metadata.uid, name)


async def wait_claim(client: AsyncClient, name: str, ok: Callable[[dict[str, Any]], bool],
                     timeout: float = 20.0) -> dict[str, Any]:
    """Follow a watch on the claim until `ok(claim)`."""
    async def follow() -> dict[str, Any]:
        async for _, obj in client.watch(ResourceClaim, namespace="default",
                                         fields={"metadata.name": name}):
            claim = obj.to_dict()
            if ok(claim):
                return claim
        raise AssertionError("watch ended")
    return await asyncio.wait_for(follow(), timeout)


def ours(claim: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["device"]: d for d in claim.get("status", {}).get("devices") or []
            if d["driver"] == DRIVER_NAME}


def conditions(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in entry.get("conditions") or []}


@pytest.fixture
async def driver(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path, tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[PluginProcess, DraKubeletSim]]:
    """The real driver process with the stack's RBAC, through a token bound to its node
    (the share count as the indirect parameter, default 1)."""
    token = await bound_token(client, SA, NODE, [camel(dict(r)) for r in cluster_role_rules()])
    env = {**node_env(node, dirs / "dp"), "QAIC_ALLOCATION_API": "dra", "NODE_NAME": NODE,
           "ALLOWED_QAIC_DEVICE_SHARES": str(getattr(request, "param", 1)),
           "QAIC_DRA_PLUGINS_DIR": str(dirs / "plugins"),
           "QAIC_DRA_REGISTRY_DIR": str(dirs / "registry"),
           "QAIC_KUBECONFIG": str(kubeconfig(api, token, dirs / "kubeconfig")),
           "QAIC_CDI_DIR": str(dirs / "cdi"), "QAIC_UDEV_ENABLED": "false"}
    async with (DraKubeletSim(dirs / "registry") as kubelet,
                PluginProcess(env, tmp_path / "plugin.log") as proc):
        try:
            await kubelet.wait_registered(DRIVER_NAME, timeout=20)
            yield proc, kubelet
        finally:
            print(proc.log_text()[-4000:])
    async for c in client.list(ResourceClaim, namespace="default"):
        await client.delete(ResourceClaim, c.metadata.name, namespace="default")


async def test_claim_status_says_which_socs_it_holds_and_follows_their_health(
    driver: tuple[PluginProcess, DraKubeletSim], client: AsyncClient, node: FakeNode,
) -> None:
    proc, kubelet = driver
    soc = node.socs[0]
    name = device_name(soc.pci_address)
    ref = await allocated_claim(client, "one", NODE, soc)
    assert (await kubelet.prepare(DRIVER_NAME, [ref])).claims[ref.uid].error == ""

    claim = await wait_claim(client, "one", lambda c: name in ours(c))
    entry = ours(claim)[name]
    assert entry["pool"] == NODE and "shareID" not in entry
    assert entry["data"] == {"socs": [{
        "pciAddress": soc.pci_address, "qid": soc.qid,
        "devNode": f"/dev/accel/accel{soc.accel_index}", "sku": soc.sku.value,
        "cardID": soc.card_id, "numaNode": soc.numa_node, "health": "Healthy"}],
        "visibleDevices": str(soc.qid)}
    ready = conditions(entry)["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Prepared")
    assert (conditions(entry)["Healthy"]["status"], conditions(entry)["Healthy"]["reason"]) == (
        "True", "Healthy")
    managers = {m["manager"] for m in claim["metadata"]["managedFields"]
                if m.get("subresource") == "status"}
    assert DRIVER_NAME in managers  # server-side apply, as the driver

    node.remove_device_node(soc.pci_address)
    bad = await wait_claim(client, "one", lambda c: conditions(ours(c).get(name, {})).get(
        "Healthy", {}).get("status") == "False")
    healthy = conditions(ours(bad)[name])["Healthy"]
    assert healthy["reason"] == "DeviceNode"
    assert f"/dev/accel/accel{soc.accel_index}" in healthy["message"]
    assert ours(bad)[name]["data"]["socs"][0]["health"] == "Unhealthy"
    assert conditions(ours(bad)[name])["Ready"] == ready  # its transition time kept
    node.restore_device_node(soc.pci_address)
    await wait_claim(client, "one", lambda c: conditions(ours(c).get(name, {})).get(
        "Healthy", {}).get("status") == "True")
    assert proc.events("dra_claim_status_failed") == []


async def test_the_driver_may_write_status_only_for_claims_on_its_node_and_needs_each_rule(
    api: ApiServer, client: AsyncClient, node: FakeNode, dirs: Path,
) -> None:
    """RBAC grows by exactly what the writes need: the token of the driver on node-1 may apply
    status.devices of a claim allocated on node-1, not of one on node-2 (the API server's
    associated-node check), and without either new rule it may not write at all."""
    soc = node.socs[0]
    rules = [camel(dict(r)) for r in cluster_role_rules()]
    here = await allocated_claim(client, "here", NODE, soc)
    there = await allocated_claim(client, "there", "node-2", soc)

    writes = iter(range(100))

    def entry(ref: ClaimRef, pool: str) -> dict[str, Any]:
        """A new value each time: the API server checks the drivers whose entries change."""
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": ref.name, "namespace": "default", "uid": ref.uid},
                "status": {"devices": [{"driver": DRIVER_NAME, "pool": pool,
                                        "device": device_name(soc.pci_address),
                                        "data": {"write": next(writes)}}]}}

    async def apply(token: str, ref: ClaimRef, pool: str) -> int:
        config = KubeConfig.from_file(kubeconfig(api, token, dirs / "sa-kubeconfig"))
        c = AsyncClient(config=config)
        try:
            await c.patch(ResourceClaimStatus, ref.name, entry(ref, pool), namespace="default",
                          patch_type=PatchType.APPLY, field_manager=DRIVER_NAME, force=True)
        except ApiError as e:
            return e.status.code or 0
        finally:
            await c.close()
        return 200

    token = await bound_token(client, SA, NODE, rules)
    assert await apply(token, here, NODE) == 200
    assert await apply(token, there, "node-2") == 422  # "changing status.devices requires ..."
    for i, rule in enumerate(rules):
        if not str(rule["resources"][0]).startswith("resourceclaims/"):
            continue
        fewer = [r for j, r in enumerate(rules) if j != i]
        token = await bound_token(client, f"without-{i}", NODE, fewer)
        assert await apply(token, here, NODE) in (403, 422), rule
    for ref in (here, there):
        await client.delete(ResourceClaim, ref.name, namespace="default")


async def test_a_driver_reload_rewrites_the_specs_of_prepared_claims(
    driver: tuple[PluginProcess, DraKubeletSim], client: AsyncClient, node: FakeNode, dirs: Path,
) -> None:
    """Operator situation: `modprobe -r qaic; modprobe qaic` on a running node. The SoCs come
    back at other accel numbers; kubelet sends no prepare (the pod sandbox stays), so the
    container's next restart would get the old node from the claim's CDI spec. The driver
    writes the spec again on the inventory change (before, it kept the old node)."""
    proc, kubelet = driver
    soc = max(node.socs, key=lambda s: s.accel_index)  # probed first, it takes a lower one
    ref = await allocated_claim(client, "reloaded", NODE, soc)
    assert (await kubelet.prepare(DRIVER_NAME, [ref])).claims[ref.uid].error == ""
    spec_path = cdi_spec_path(dirs / "cdi", ref.uid)

    def node_in_spec() -> str:
        spec = json.loads(spec_path.read_text())
        [device] = spec["devices"]
        [dev] = device["containerEdits"]["deviceNodes"]
        return str(dev["path"])

    before = f"/dev/accel/accel{soc.accel_index}"
    assert node_in_spec() == before
    node.reload_driver(probe_order=[soc.pci_address])
    [moved] = [s for s in node.socs if s.pci_address == soc.pci_address]
    after = f"/dev/accel/accel{moved.accel_index}"
    assert after != before, "the re-probe must move the SoC"
    await proc.wait_events("dra_specs_refreshed", 1, timeout=20)
    assert node_in_spec() == after
    claim = await wait_claim(client, "reloaded", lambda c: ours(c).get(
        device_name(soc.pci_address), {}).get("data", {}).get("socs", [{}])[0].get(
        "devNode") == after)
    assert ours(claim)  # the status shows the new node too


@pytest.mark.parametrize("driver", [2], indirect=True)
async def test_shared_socs_are_published_and_each_share_is_prepared_with_its_status(
    api: ApiServer, driver: tuple[PluginProcess, DraKubeletSim], client: AsyncClient,
    node: FakeNode,
) -> None:
    """Before: `allowedDeviceShares` was refused in DRA mode and the driver ignored the
    setting, publishing every SoC for one claim."""
    _, kubelet = driver
    soc = node.socs[0]
    name = device_name(soc.pci_address)

    async def published() -> dict[str, Any]:
        # The previous test's driver left its slice (same node, same pool) until this driver
        # replaces it: wait for the one that shares the SoC, not the first one seen.
        async for _, s in client.watch(ResourceSlice, fields={"spec.driver": DRIVER_NAME}):
            for d in s.to_dict()["spec"].get("devices") or []:
                if d["name"] == name and "allowMultipleAllocations" in d:
                    return dict(d)
        raise AssertionError("watch ended")
    device = await asyncio.wait_for(published(), 20)
    assert device["allowMultipleAllocations"] is True
    assert device["capacity"]["shares"]["value"] == "2"
    settings = load_settings("e2e", {"allocationApi": "dra", "allowedDeviceShares": "2"})
    assert probe(Client(config=KubeConfig.from_file(api.kubeconfig)), settings) == []

    shares = ["0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002"]
    refs = [await allocated_claim(client, f"share-{i}", NODE, soc, share=share)
            for i, share in enumerate(shares)]
    resp = await kubelet.prepare(DRIVER_NAME, refs)
    assert [resp.claims[r.uid].error for r in refs] == ["", ""]
    for ref, share in zip(refs, shares, strict=True):
        claim = await wait_claim(client, ref.name, lambda c: name in ours(c))
        assert ours(claim)[name]["shareID"] == share
        assert ours(claim)[name]["data"]["socs"][0]["qid"] == soc.qid  # the same SoC
