"""The preview's node-pool check (infra/cluster_pools.py) against a real kube-apiserver 1.37:
Nodes with pool labels and the project's DaemonSets as other stacks leave them (labels,
stack annotation, nodeSelector), and the lines a stack gets for its nodeSelector, namespace
and mode. The real CLI on a real fleet is tests/e2e/test_fleet.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import Client, KubeConfig
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Namespace, Node

from e2e.apiserver import ApiServer, find_binaries
from infra.cluster_pools import PoolReport, check_pools
from infra.components.dra_driver import dra_labels
from infra.components.dra_objects import DRA_APP_NAME
from infra.components.plugin_pod import APP_NAME, STACK_ANNOTATION, labels
from infra.config import load_settings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_binaries() is None, reason="kube-apiserver/etcd not built"),
]
POOL = "example.com/qaic-pool"
NODES = {"n1": "a", "n2": "b", "n3": "a"}


def daemonset(namespace: str, name: str, selector: dict[str, str],
              stack: str | None) -> DaemonSet:
    meta_labels = dra_labels() if name == DRA_APP_NAME else labels()
    annotations = {STACK_ANNOTATION: stack} if stack else {}
    return DaemonSet.from_dict({
        "metadata": {"name": name, "namespace": namespace, "labels": meta_labels,
                     "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": meta_labels}, "spec": {
                "nodeSelector": selector,
                "containers": [{"name": "plugin", "image": "reg/qaic:1"}]}},
        }})


@pytest.fixture(scope="module")
def client(api: ApiServer) -> Iterator[Client]:
    c = Client(KubeConfig.from_file(api.kubeconfig).get())
    for name, pool in NODES.items():
        c.create(Node.from_dict({"metadata": {"name": name, "labels": {POOL: pool}}}))
    for ns in ("qaic-pool-a", "qaic-pool-b", "qaic-legacy"):
        c.create(Namespace.from_dict({"metadata": {"name": ns}}))
    c.create(daemonset("qaic-pool-a", APP_NAME, {POOL: "a"}, "pool-a"))
    yield c


def lines(client: Client, stack: str, **config: Any) -> PoolReport:
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    return check_pools(stack, load_settings(stack, raw), client)


def test_a_stack_for_a_free_pool_gets_no_line(client: Client) -> None:
    """Operator situation: pool b's stack beside pool a's: disjoint nodes, nothing to say."""
    report = lines(client, "pool-b", namespace="qaic-pool-b", nodeSelector=[f"{POOL}=b"])
    assert report == PoolReport()


def test_its_own_daemonset_is_not_another_stack(client: Client) -> None:
    """Operator situation: `pulumi up` again on pool a's stack (its DaemonSet exists)."""
    assert lines(client, "pool-a", namespace="qaic-pool-a",
                 nodeSelector=[f"{POOL}=a"]) == PoolReport()


def test_a_selector_matching_no_node_is_a_warning_not_a_refusal(client: Client) -> None:
    """Operator situation: a stack for pool c, whose nodes do not exist yet (scaled to zero,
    or not labelled yet): `up` goes on, and the preview says the DaemonSet runs nowhere."""
    report = lines(client, "pool-c", namespace="qaic-pool-c", nodeSelector=[f"{POOL}=c"])
    assert report.errors == []
    assert report.warnings == [
        "stack 'pool-c': 'qaic-k8s:nodeSelector' is '[\"example.com/qaic-pool=c\"]', which "
        "matches none of the cluster's 3 nodes; the DaemonSet runs nowhere until a node "
        "carries these labels (fine for a pool not scaled up yet)."]


def test_a_second_stack_for_the_same_pool_is_refused(client: Client) -> None:
    """Operator situation: a second stack aimed at pool a by mistake (copied stack file):
    two plugins would serve nodes 1 and 3. One line, naming the key, its value, the nodes and
    the stack that serves them. A selector that only overlaps (every node) is refused too."""
    report = lines(client, "pool-a2", namespace="qaic-pool-a2", nodeSelector=[f"{POOL}=a"])
    assert report.warnings == []
    assert report.errors == [
        "stack 'pool-a2': 'qaic-k8s:nodeSelector' is '[\"example.com/qaic-pool=a\"]', which "
        "selects nodes n1, n3 that stack 'pool-a' (DaemonSet qaic-pool-a/qaic-device-plugin) "
        "already serves (its nodeSelector {\"example.com/qaic-pool\": \"a\"}); two plugins on "
        "a node offer its SoCs twice: choose labels that no other stack's nodeSelector "
        "matches."]
    everywhere = lines(client, "all", namespace="qaic-all", nodeSelector=[])
    assert len(everywhere.errors) == 1 and "selects nodes n1, n3 that stack 'pool-a'" in (
        everywhere.errors[0])


def test_another_stack_in_the_same_namespace_is_refused(client: Client) -> None:
    """Operator situation: a second stack left at pool a's namespace: it would take over
    pool a's DaemonSet (same name), whatever its selector."""
    report = lines(client, "pool-b", namespace="qaic-pool-a", nodeSelector=[f"{POOL}=b"])
    assert report.errors == [
        "stack 'pool-b': 'qaic-k8s:namespace' is 'qaic-pool-a', where stack 'pool-a' "
        "(DaemonSet qaic-pool-a/qaic-device-plugin) already runs; two stacks in one namespace "
        "would take over each other's objects: give each stack a namespace of its own."]


def test_a_daemonset_without_the_annotation_belongs_to_its_namespace(client: Client) -> None:
    """A DaemonSet deployed before the stack annotation: the stack of its namespace owns it
    (no line); for any other stack it is another stack's."""
    legacy = daemonset("qaic-legacy", APP_NAME, {POOL: "b"}, None)
    client.create(legacy)
    try:
        assert lines(client, "old", namespace="qaic-legacy",
                     nodeSelector=[f"{POOL}=b"]) == PoolReport()
        [line] = lines(client, "pool-b", namespace="qaic-pool-b",
                       nodeSelector=[f"{POOL}=b"]).errors
        assert "selects nodes n2 that another stack (DaemonSet qaic-legacy/qaic-device-plugin)" \
            in line, line
    finally:
        client.delete(DaemonSet, APP_NAME, namespace="qaic-legacy")


def test_a_second_dra_stack_is_refused_even_on_another_pool(client: Client) -> None:
    """Operator situation: pool b moved to DRA mode by its own stack while pool a's stack is
    already in DRA mode: the DRA mode's cluster-wide objects (DeviceClasses, RBAC, policies)
    would be written by both. Refused with the mode key; a device-plugin stack beside a DRA
    one on disjoint pools is fine."""
    client.create(daemonset("qaic-pool-a", DRA_APP_NAME, {POOL: "a"}, "pool-a"))
    try:
        report = lines(client, "pool-b", namespace="qaic-pool-b", allocationApi="dra",
                       nodeSelector=[f"{POOL}=b"])
        assert report.errors == [
            "stack 'pool-b': 'qaic-k8s:allocationApi' is 'dra', but stack 'pool-a' (DaemonSet "
            "qaic-pool-a/qaic-dra-driver) already runs the DRA driver qaic.qualcomm.com on "
            "this cluster; its DeviceClasses, ClusterRole, binding and admission policies "
            "are cluster-wide objects of one stack: deploy DRA mode from one stack per "
            "cluster."]
        assert lines(client, "pool-b", namespace="qaic-pool-b",
                     nodeSelector=[f"{POOL}=b"]) == PoolReport()
    finally:
        client.delete(DaemonSet, DRA_APP_NAME, namespace="qaic-pool-a")


def test_samples_in_another_stacks_workload_namespace_are_refused(client: Client) -> None:
    """Operator situation: pool b's stack turns the samples on, and both stacks keep the
    default workloadNamespace: pool a's samples are there (fixed names; a destroy of one stack
    would delete the namespace under the other's). Refused; samples off, nothing to say."""
    client.create(Namespace.from_dict({"metadata": {
        "name": "qaic-workloads", "annotations": {STACK_ANNOTATION: "pool-a"}}}))
    report = lines(client, "pool-b", namespace="qaic-pool-b", nodeSelector=[f"{POOL}=b"],
                   workloadPodExample="true", workloadImage="reg/sample:1")
    assert report.errors == [
        "stack 'pool-b': 'qaic-k8s:workloadNamespace' is 'qaic-workloads', where stack "
        "'pool-a' already runs its samples; give each stack a workloadNamespace of its own (or "
        "the samples to one stack)."]
    assert lines(client, "pool-a", namespace="qaic-pool-a", nodeSelector=[f"{POOL}=a"],
                 workloadPodExample="true", workloadImage="reg/sample:1") == PoolReport()
    assert lines(client, "pool-b", namespace="qaic-pool-b",
                 nodeSelector=[f"{POOL}=b"]) == PoolReport()
