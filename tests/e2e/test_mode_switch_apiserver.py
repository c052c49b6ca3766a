"""Leaving DRA mode (infra/mode_switch.py through the preflight, infra/cluster_apis.py) at a
real kube-apiserver 1.37: claims allocated as the scheduler writes them (the status
subresource), on nodes of two pools. The same refusal by the real CLI on a real cluster, and
the switch that follows once the claims are gone: tests/e2e/test_migration.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Node, Pod
from lightkube.resources.resource_v1 import ResourceClaim, ResourceClaimStatus
from lightkube.types import PatchType

from e2e.apiserver import ApiServer, find_binaries
from infra.cluster_apis import require_served
from infra.config import ConfigError, load_settings
from qaic_device_plugin.dra.backend import DRIVER_NAME

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_binaries() is None, reason="kube-apiserver/etcd not built"),
]
NS = "jobs"


@pytest.fixture(scope="module")
def client(api: ApiServer) -> Iterator[Client]:
    """Nodes a-1 (pool a) and b-1 (pool b); claims: two of ours allocated on a-1, one on
    b-1, one of another driver on a-1, one of ours not allocated."""
    c = Client(KubeConfig.from_file(api.kubeconfig).get())
    c.create(Namespace(metadata=ObjectMeta(name=NS)))
    for node, pool in (("a-1", "a"), ("b-1", "b")):
        c.create(Node(metadata=ObjectMeta(name=node, labels={"pool": pool})))
    for name, driver, node in (("train-0", DRIVER_NAME, "a-1"), ("train-1", DRIVER_NAME, "a-1"),
                               ("infer", DRIVER_NAME, "b-1"), ("nic", "nic.example.com", "a-1"),
                               ("pending", None, None)):
        c.create(ResourceClaim.from_dict({
            "metadata": {"name": name, "namespace": NS},
            "spec": {"devices": {"requests": [{"name": "socs", "exactly": {
                "deviceClassName": DRIVER_NAME, "count": 1}}]}}}))
        if driver is None:
            continue
        c.patch(ResourceClaimStatus, name, {"status": {"allocation": {"devices": {"results": [
            {"request": "socs", "driver": driver, "pool": node, "device": "soc-0"}]}}}},
            namespace=NS, patch_type=PatchType.MERGE)
    yield c
    c.close()


def test_leaving_dra_mode_is_refused_while_our_claims_are_allocated(client: Client) -> None:
    """Operator situation: `pulumi preview` / `up` of a DRA stack switched back to
    `allocationApi: devicePlugin` while pods still run on claims of our driver. One line
    naming the key, the claims (first three and how many more) and what to do; other
    drivers' claims and claims not allocated are not named. (nodeSelector [] is every node,
    as the e2e stack has it; the default is NFD's label, which these nodes do not carry.)"""
    with pytest.raises(ConfigError) as info:
        require_served("e2e", load_settings("e2e", {"allocationApi": "devicePlugin",
                                                     "nodeSelector": "[]"}), client)
    assert str(info.value) == (
        "stack 'e2e': 'qaic-k8s:allocationApi' is 'devicePlugin', but 3 ResourceClaim(s) "
        "allocated by qaic.qualcomm.com on its nodes are in use (jobs/infer, jobs/train-0, "
        "jobs/train-1); without the DRA driver kubelet cannot unprepare them and their pods "
        "hang in Terminating. Delete those pods and claims (kubectl get resourceclaims -A), "
        "then run pulumi up again.")
    assert "\n" not in str(info.value)


def test_only_the_stacks_own_nodes_count_and_dra_mode_passes(client: Client) -> None:
    """A device-plugin stack for pool b is refused for b's claim only; once it is gone, it
    passes although pool a (another stack's DRA nodes) still has claims. DRA mode is never
    refused by this check."""
    pool_b = load_settings("e2e", {"nodeSelector": '["pool=b"]'})
    with pytest.raises(ConfigError, match=r"but 1 ResourceClaim\(s\) .* \(jobs/infer\);"):
        require_served("e2e", pool_b, client)
    client.delete(ResourceClaim, "infer", namespace=NS)
    require_served("e2e", pool_b, client)
    require_served("e2e", load_settings("e2e", {"allocationApi": "dra"}), client)


def test_more_than_three_claims_are_counted(client: Client) -> None:
    for i in (2, 3):
        name = f"train-{i}"
        client.create(ResourceClaim.from_dict({
            "metadata": {"name": name, "namespace": NS},
            "spec": {"devices": {"requests": [{"name": "socs", "exactly": {
                "deviceClassName": DRIVER_NAME, "count": 1}}]}}}))
        client.patch(ResourceClaimStatus, name, {"status": {"allocation": {"devices": {
            "results": [{"request": "socs", "driver": DRIVER_NAME, "pool": "a-1",
                         "device": f"soc-{i}"}]}}}}, namespace=NS, patch_type=PatchType.MERGE)
    with pytest.raises(ConfigError) as info:
        require_served("e2e", load_settings("e2e", {"nodeSelector": '["pool=a"]'}), client)
    assert ("4 ResourceClaim(s) allocated by qaic.qualcomm.com on its nodes are in use "
            "(jobs/train-0, jobs/train-1, jobs/train-2 and 1 more)") in str(info.value)


def test_the_stacks_own_samples_are_not_in_the_way(client: Client) -> None:
    """The stack's sample pods (label part-of: qaic-k8s-samples, in its workload namespace)
    hold claims too; the same `pulumi up` deletes them before the driver, so they are not
    named. The same label elsewhere is not the stack's."""
    for ns in ("qaic-workloads", "elsewhere"):
        client.create(Namespace(metadata=ObjectMeta(name=ns)))
        pod = client.create(Pod.from_dict({
            "metadata": {"name": "qaic-pod-example-1", "namespace": ns,
                         "labels": {"app.kubernetes.io/part-of": "qaic-k8s-samples"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
        assert pod.metadata is not None
        client.create(ResourceClaim.from_dict({
            "metadata": {"name": "sample", "namespace": ns, "ownerReferences": [{
                "apiVersion": "v1", "kind": "Pod", "name": "qaic-pod-example-1",
                "uid": pod.metadata.uid}]},
            "spec": {"devices": {"requests": [{"name": "socs", "exactly": {
                "deviceClassName": DRIVER_NAME, "count": 1}}]}}}))
        client.patch(ResourceClaimStatus, "sample", {"status": {"allocation": {"devices": {
            "results": [{"request": "socs", "driver": DRIVER_NAME, "pool": "a-1",
                         "device": "soc-9"}]}}}}, namespace=ns, patch_type=PatchType.MERGE)
    with pytest.raises(ConfigError) as info:
        require_served("e2e", load_settings("e2e", {"nodeSelector": '["pool=a"]'}), client)
    assert "5 ResourceClaim(s)" in str(info.value)  # train-0..3 and elsewhere/sample
    assert "(elsewhere/sample, jobs/train-0, jobs/train-1 and 2 more)" in str(info.value)
