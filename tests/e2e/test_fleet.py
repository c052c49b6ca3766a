"""A fleet, not a node (issue 21): a real 3-node cluster (cluster/fleet.py), each node with its
own namespaces, containerd, kubelet and cards (1: two Ultra; 2: Standard + Pro; 3: Ultra +
Standard), `pulumi up` of real stacks on it, the real scheduler placing across nodes.

One fleet for the module; the tests run in file order and each leaves the fleet as the next
expects: node pools in device-plugin mode (two stacks), then DRA mode (one stack): placement,
drain, a node leaving, a node joining, a rolling upgrade, a kubelet stopped for good, destroy.
`make e2e` runs the tests marked fleet_ci (pools, placement in both modes, drain, leave, join,
destroy: about 4 min of fleet work); `make e2e-full` runs them all (the rolls, the preview lines
and the kubelet stopped for good add about 3 min).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_objects import (
    HOSTNAME,
    NS,
    claim,
    claim_spec,
    claim_template,
    create,
    extended_pod,
    job,
    pod,
)
from fleet_reads import (
    allocated,
    check_view,
    claim_of,
    container,
    daemon_pods,
    devices_of,
    holds_claim,
    live_pods,
    node_slices,
    offered,
    published_socs,
    waiting_reason,
)
from fleet_roll import node_rolls, one_node_at_a_time, report

from cluster import fakenode, host, images
from cluster.fleet import POOL_LABEL, Fleet, FleetNode, node_spec
from cluster.inspect import qaic_resources
from cluster.stack import Stack, fleet_for_tests
from cluster.tools import missing_prerequisites
from cluster.watch import Watch, is_ready
from qaic_device_plugin.dra.backend import device_name

pytestmark = [pytest.mark.e2e, pytest.mark.fleet]

N1, N2, N3, N4 = (f"qaic-fleet-{i}" for i in (1, 2, 3, 4))
DRIVER_NS = "qaic-system"
NO_SAMPLES = {"workloadPodExample": "false", "workloadDeployment": "false",
              "workloadUltraJob": "false"}
Q = "qualcomm.com/qaic"
POOLS_WANT = {N1: {f"{Q}-ultra": 8}, N2: {Q: 2}, N3: {f"{Q}-ultra": 4, f"{Q}-std": 1}}
#: A "new release": the same image under a second name, so `pulumi up` rolls the DaemonSet.
NEXT_IMAGE = "localhost/qaic-device-plugin:e2e-next"
UNREACHABLE = "node.kubernetes.io/unreachable"
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"


def diagnostics(out: str, kind: str, stack: str) -> list[str]:
    """The CLI's `warning:`/`error:` lines about `stack` (the program's one-line reports)."""
    return [ln.strip() for ln in out.splitlines()
            if ln.strip().startswith(f"{kind}: stack '{stack}'")]


def gone(fleet: Fleet, kind: str, name: str) -> bool:
    return fleet.kubectl("get", kind, "-n", NS, name, check=False).returncode != 0


def soc_cards(node: FleetNode, device_ids: list[str]) -> list[str]:
    """The cards of the SoCs a device plugin handed out (device IDs are PCI addresses)."""
    by_pci = {s.pci_address: s.card_id for s in node.fake.socs}
    return [by_pci[d.split("::")[0]] for d in device_ids]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    why = missing_prerequisites(cdi=True)
    if why:
        pytest.skip("; ".join(why))
    with fleet_for_tests([node_spec(i) for i in (1, 2, 3)]) as f:
        f.kubectl("create", "namespace", NS)
        yield f


@pytest.fixture(scope="module")
def pools(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stack]:
    """Two deployments of the project on one cluster, one per node pool: pool a in SKU mode,
    pool b with one qualcomm.com/qaic resource."""
    out = {}
    for pool, sku_mode in (("a", "true"), ("b", "false")):
        out[pool] = Stack.create(
            fleet, tmp_path_factory.mktemp(f"pool-{pool}"), name=f"pool-{pool}",
            namespace=f"qaic-pool-{pool}", nodeSelector=[f"{POOL_LABEL}={pool}"],
            skuBasedResources=sku_mode, **NO_SAMPLES)
        out[pool].up()
    return out


@pytest.fixture(scope="module")
def dra(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    s = Stack.create(fleet, tmp_path_factory.mktemp("dra"), name="dra", allocationApi="dra",
                     **NO_SAMPLES)
    s.up()
    return s


# ----- the fleet itself --------------------------------------------------------------------


@pytest.mark.fleet_ci
def test_each_node_sees_its_own_machine(fleet: Fleet, record_property: Any) -> None:
    """Operator situation: one cluster of accelerator nodes with different cards. Each node's
    kubelet, runtime and hostPath mounts must see that node's devices and directories."""
    nodes = {n["metadata"]["name"]: n for n in fleet.get("nodes")["items"]}
    assert set(nodes) == {N1, N2, N3}
    for name, node in fleet.nodes.items():
        addresses = nodes[name]["status"]["addresses"]
        ips = [a["address"] for a in addresses if a["type"] == "InternalIP"]
        assert ips == [node.net.addr]
        assert nodes[name]["metadata"]["labels"][POOL_LABEL] == node.spec.labels[POOL_LABEL]
        seen_dev = set(host.run(*node.enter(), "ls", "/dev/accel").stdout.split())
        assert seen_dev == {p.name for p in (node.fake.dev_root / "accel").iterdir()}
        sysfs = fakenode.NODE_ROOT / "sys/class/accel"
        seen_sys = set(host.run(*node.enter(), "ls", str(sysfs)).stdout.split())
        assert {f"accel{s.accel_index}" for s in node.fake.socs} < seen_sys
        assert len(seen_sys) == len(node.fake.socs) + 1  # + the Intel NPU at accel0
        plugin_dir = Path("/var/lib/kubelet/device-plugins")
        assert node.host_path(plugin_dir / "kubelet.sock").is_socket()
        record_property(f"{name}_ready_seconds", round(node.timing.ready_seconds, 2))
        print(f"{name}: Ready {node.timing.ready_seconds:.2f} s after kubelet start, "
              f"{node.timing.bring_up_seconds:.1f} s from nothing")
    assert [len(fleet.nodes[n].fake.socs) for n in (N1, N2, N3)] == [8, 2, 5]
    assert not any(Path("/dev/accel").iterdir())  # the host's own stays empty


# ----- device-plugin mode: node pools ------------------------------------------------------


@pytest.mark.fleet_ci
def test_each_pool_runs_its_own_plugin_with_its_own_settings(
    fleet: Fleet, pools: dict[str, Stack],
) -> None:
    """Operator situation: two node pools, each deployed by its own stack with a nodeSelector:
    pool a (nodes 1 and 3) with SKU-based resources, pool b (node 2) with one pool. Each
    plugin runs only on its pool's nodes, and each node offers the names its pool asked for."""
    where = {pool: sorted(daemon_pods(fleet, f"qaic-pool-{pool}")) for pool in ("a", "b")}
    assert where == {"a": [N1, N3], "b": [N2]}
    fleet.wait_for(f"each node to offer {POOLS_WANT}", lambda: offered(fleet) == POOLS_WANT,
                   timeout=120)
    for name in (N1, N3):  # no single-pool name from the other stack's mode
        assert Q not in qaic_resources(fleet.get("node", name)["status"]["capacity"])
    assert set(qaic_resources(fleet.get("node", N2)["status"]["capacity"])) == {Q}


def test_an_empty_pool_or_a_taken_pool_is_reported_at_preview(
    fleet: Fleet, pools: dict[str, Stack], tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Operator situation: two new stack files for the cluster that has pools a and b: one
    for pool c, whose nodes are not there yet, and a copy of pool a's under another name and
    namespace. `pulumi preview` (the real CLI) says each in one line: the empty pool as a
    warning (the preview succeeds: the pool may be scaled up later), the taken pool as an
    error before anything is planned (two plugins would serve nodes 1 and 3)."""
    empty = Stack.create(fleet, tmp_path_factory.mktemp("pool-c"), name="pool-c",
                         namespace="qaic-pool-c", nodeSelector=[f"{POOL_LABEL}=c"],
                         **NO_SAMPLES)
    proc = empty.run("preview")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert diagnostics(out, "warning", "pool-c") == [
        "warning: stack 'pool-c': 'qaic-k8s:nodeSelector' is '[\"example.com/qaic-pool=c\"]', "
        "which matches none of the cluster's 3 nodes; the DaemonSet runs nowhere until a node "
        "carries these labels (fine for a pool not scaled up yet)."], out[-3000:]
    taken = Stack.create(fleet, tmp_path_factory.mktemp("pool-a2"), name="pool-a2",
                         namespace="qaic-pool-a2", nodeSelector=[f"{POOL_LABEL}=a"],
                         skuBasedResources="true", **NO_SAMPLES)
    proc = taken.run("preview")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert diagnostics(out, "error", "pool-a2") == [
        "error: stack 'pool-a2': 'qaic-k8s:nodeSelector' is '[\"example.com/qaic-pool=a\"]', "
        f"which selects nodes {N1}, {N3} that stack 'pool-a' (DaemonSet "
        "qaic-pool-a/qaic-device-plugin) already serves (its nodeSelector "
        "{\"example.com/qaic-pool\": \"a\"}); two plugins on a node offer its SoCs twice: "
        "choose labels that no other stack's nodeSelector matches."], out[-3000:]
    assert "kubernetes:" not in out and "Traceback" not in out  # nothing planned


def test_pool_a_rolls_node_by_node_and_its_job_keeps_its_socs(
    fleet: Fleet, pools: dict[str, Stack], record_property: Any,
) -> None:
    """Operator situation: a new plugin image for pool a (`pulumi up` with a new tag) while a
    job holds 2 Ultra SoCs there. The plugin is replaced on one node at a time, the job keeps
    its container and exactly its SoCs (kubelet's PodResources), and each node offers all its
    SoCs again. Measures re-advertise time per node (old pod going -> new pod Ready, which
    the plugin turns only once kubelet has its registration)."""
    create(fleet, extended_pod("two-ultra", f"{Q}-ultra", 2, {POOL_LABEL: "a"}))
    fleet.wait_for("the 2-SoC pod to run", lambda: fleet.get(
        "pod", "-n", NS, "two-ultra")["status"].get("phase") == "Running")
    before = fleet.get("pod", "-n", NS, "two-ultra")
    node = fleet.nodes[before["spec"]["nodeName"]]
    held = devices_of(node, "two-ultra")
    assert len(held) == 2, held
    old = {n: p["metadata"]["uid"] for n, p in daemon_pods(fleet, "qaic-pool-a").items()}
    fleet.tag_image(images.PLUGIN, NEXT_IMAGE)
    with Watch(fleet, "pods", "qaic-pool-a") as watch:
        pools["a"].up(imageRef=NEXT_IMAGE)
        rolls = node_rolls(watch, old)
    assert sorted(rolls) == [N1, N3] and one_node_at_a_time(rolls), rolls
    assert not any(r.surged for r in rolls.values()), rolls  # maxUnavailable 1: replaced
    assert {r.new_pod["spec"]["containers"][0]["image"] for r in rolls.values()} == {NEXT_IMAGE}
    report(rolls, "device_plugin", record_property)
    fleet.wait_for("every SoC offered again", lambda: offered(fleet) == POOLS_WANT)
    after = fleet.get("pod", "-n", NS, "two-ultra")
    assert container(after) == container(before)
    assert devices_of(node, "two-ultra") == held
    fleet.kubectl("delete", "pod", "-n", NS, "two-ultra", "--wait=true")


@pytest.mark.fleet_ci
def test_device_plugin_mode_places_a_four_soc_pod_without_card_knowledge(
    fleet: Fleet, pools: dict[str, Stack], record_property: Any,
) -> None:
    """Operator situation: the job stream of the DRA placement test below, in device-plugin
    mode (pool a, SKU mode): two 1-SoC Ultra pods on node 1, then a pod asking for
    `qualcomm.com/qaic-ultra: 4`. The scheduler sees counts only (node 1: 6 free, node 3: 4);
    the plugin's preferred allocation picks SoCs only once the node is chosen. Reported, not
    asserted: where the holders' SoCs went, which node the 4-SoC pod got and whether its
    SoCs are on one card. Asserted: it runs with 4 SoCs."""
    n1 = fleet.nodes[N1]

    def run(name: str, count: int) -> None:
        create(fleet, extended_pod(name, f"{Q}-ultra", count, {HOSTNAME: N1}))
        fleet.wait_for(f"{name} to run", lambda: fleet.get(
            "pod", "-n", NS, name)["status"].get("phase") == "Running")

    # One SoC of each card held, as in DRA mode; the plugin packs 1-SoC pods onto one card,
    # so the spread is made the way churn makes it: a whole card filled first, then the rest
    # of the other one (the plugin's preference decides; what the holders got is reported).
    run("dp-fill", 4)
    run("dp-hold-1", 1)
    fleet.kubectl("delete", "pod", "-n", NS, "dp-fill", "--wait=true")
    run("dp-fill-3", 3)
    run("dp-hold-0", 1)
    fleet.kubectl("delete", "pod", "-n", NS, "dp-fill-3", "--wait=true")
    held = [soc_cards(n1, devices_of(n1, f"dp-hold-{i}")) for i in range(2)]
    create(fleet, extended_pod("dp-four", f"{Q}-ultra", 4, {POOL_LABEL: "a"}))
    fleet.wait_for("the 4-SoC pod to run", lambda: fleet.get(
        "pod", "-n", NS, "dp-four")["status"].get("phase") == "Running", timeout=180)
    where = fleet.get("pod", "-n", NS, "dp-four")["spec"]["nodeName"]
    cards = soc_cards(fleet.nodes[where], devices_of(fleet.nodes[where], "dp-four"))
    assert len(cards) == 4, cards
    one_card = len(set(cards)) == 1
    holders_on = "one card" if len({c for [c] in held}) == 1 else "one SoC on each card"
    record_property("dp_holders_on", holders_on)
    record_property("dp_four_soc_node", where)
    record_property("dp_four_soc_one_card", one_card)
    print(f"device-plugin placement: node 1's holders on {holders_on}; the 4-SoC pod on "
          f"{where}, {'one card' if one_card else f'{len(set(cards))} cards'}")
    fleet.kubectl("delete", "pod", "-n", NS, "dp-four", "dp-hold-0", "dp-hold-1",
                  "--wait=true")


@pytest.mark.fleet_ci
def test_pool_stacks_destroy_only_their_own(fleet: Fleet, pools: dict[str, Stack]) -> None:
    """Destroying pool b's stack leaves pool a's plugin running; then pool a's goes too."""
    for pool, other in (("b", "a"), ("a", None)):
        proc = pools[pool].run("destroy", "--yes")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        fleet.wait_for(f"pool {pool}'s namespace (and plugin pods) gone", lambda p=pool: (
            fleet.kubectl("get", "ns", f"qaic-pool-{p}", check=False).returncode != 0))
        if other:
            assert sorted(daemon_pods(fleet, f"qaic-pool-{other}")) == [N1, N3]


# ----- DRA mode: cluster-wide placement ----------------------------------------------------


@pytest.mark.fleet_ci
def test_every_node_publishes_its_own_socs(fleet: Fleet, dra: Stack) -> None:
    """Operator situation: DRA mode on a mixed fleet. Each node's driver publishes exactly
    that node's SoCs, in a pool of its own, with their SKU and card."""
    for name, node in fleet.nodes.items():
        fleet.wait_for(f"{name}'s SoCs published", lambda n=name: bool(published_socs(fleet, n)))
        devices = published_socs(fleet, name)
        assert set(devices) == {device_name(s.pci_address) for s in node.fake.socs}, name
        for soc in node.fake.socs:
            attrs = devices[device_name(soc.pci_address)]["attributes"]
            assert attrs["sku"] == {"string": soc.sku.value}
            assert attrs["cardID"] == {"string": soc.card_id}
    fleet.wait_for("a Ready driver on every node", lambda: {
        n for n, p in daemon_pods(fleet, DRIVER_NS).items() if is_ready(p)} == set(fleet.nodes))


@pytest.mark.fleet_ci
def test_one_card_claim_lands_on_the_only_node_with_a_whole_free_card(
    fleet: Fleet, dra: Stack,
) -> None:
    """Operator situation: Ultra SoCs are free across the fleet but scattered: node 1 has six
    (one SoC of each of its cards is taken by a running job), node 3 has one whole free card.
    A job that needs 4 SoCs of one card must land on node 3, not where most SoCs are free."""
    cards = sorted({s.card_id for s in fleet.nodes[N1].fake.socs})
    assert len(cards) == 2
    for i, card in enumerate(cards):
        create(fleet, claim(f"hold-{i}", claim_spec(1, card=card)))
        create(fleet, pod(f"hold-{i}", f"hold-{i}", node=N1))
    fleet.wait_for("the holders to run", lambda: all(
        fleet.get("pod", "-n", NS, f"hold-{i}")["status"].get("phase") == "Running"
        for i in range(2)))
    held = [check_view(fleet, fleet.get("pod", "-n", NS, f"hold-{i}")) for i in range(2)]
    assert sorted(s.card_id for [s] in held) == cards
    create(fleet, claim_template("whole-card", claim_spec(4, same_card=True)),
           job("whole-card", "whole-card"))
    fleet.wait_for("the 4-SoC job's pod to run", lambda: any(
        p["status"].get("phase") == "Running" for p in live_pods(fleet, "job=whole-card")),
        timeout=180)
    [p] = live_pods(fleet, "job=whole-card")
    assert p["spec"]["nodeName"] == N3
    socs = check_view(fleet, p)
    assert len(socs) == 4 and len({s.card_id for s in socs}) == 1
    assert {s.sku.value for s in socs} == {"ultra"}


# ----- DRA mode: nodes come and go ---------------------------------------------------------


@pytest.mark.fleet_ci
def test_draining_a_node_evicts_its_job_and_releases_its_socs(fleet: Fleet, dra: Stack) -> None:
    """Operator situation: node 3 goes into maintenance (`kubectl drain`). Its job is evicted,
    the claim's SoCs are released (unprepared on the node: no CDI spec, not in the driver's
    checkpoint; the generated claim deleted), the driver stays, and the job's new pod waits:
    no other node has a whole free card."""
    [old] = live_pods(fleet, "job=whole-card")
    name = claim_of(old)
    uid = fleet.get("resourceclaim", "-n", NS, name)["metadata"]["uid"]
    n3 = fleet.nodes[N3]
    assert holds_claim(n3, uid) == {"cdi": True, "checkpoint": True}
    fleet.kubectl("drain", N3, "--ignore-daemonsets", "--timeout=300s", timeout=360)
    fleet.wait_for("the claim unprepared on node 3",
                   lambda: holds_claim(n3, uid) == {"cdi": False, "checkpoint": False})
    fleet.wait_for("the claim deleted", lambda: fleet.kubectl(
        "get", "resourceclaim", "-n", NS, name, check=False).returncode != 0)
    on_n3 = fleet.get("pods", "-A", "--field-selector", f"spec.nodeName={N3}")["items"]
    assert {p["metadata"]["namespace"] for p in on_n3} == {DRIVER_NS}
    fleet.wait_for("the job's new pod", lambda: bool(live_pods(fleet, "job=whole-card")))
    [new] = live_pods(fleet, "job=whole-card")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    fleet.wait_for("why it waits", lambda: bool(waiting_reason(fleet, new["metadata"]["name"])))
    assert "cannot allocate all claims" in waiting_reason(fleet, new["metadata"]["name"])
    assert not fleet.get("pod", "-n", NS, new["metadata"]["name"])["spec"].get("nodeName")


@pytest.mark.fleet_ci
def test_a_node_that_leaves_takes_its_slices_with_it(fleet: Fleet, dra: Stack) -> None:
    """Operator situation: node 3 is switched off and its Node deleted (scaled down). Its
    ResourceSlices go with it (owner reference to the Node); stale ones would have the
    scheduler allocate SoCs of a machine that is gone."""
    assert fleet.remove_node(N3) == []
    fleet.wait_for("node 3's slices gone", lambda: not node_slices(fleet, N3), timeout=120)
    assert N3 not in {n["metadata"]["name"] for n in fleet.get("nodes")["items"]}
    [waiting] = live_pods(fleet, "job=whole-card")
    assert not waiting["spec"].get("nodeName")


@pytest.mark.fleet_ci
def test_a_joining_node_takes_the_waiting_job(fleet: Fleet, dra: Stack,
                                             record_property: Any) -> None:
    """Operator situation: a job waits for a whole Ultra card; the operator adds a node with
    one. The node joins, the DaemonSet starts the driver there, its SoCs are published and
    the waiting job is scheduled there. Measures join-to-first-scheduled-job."""
    [waiting] = live_pods(fleet, "job=whole-card")
    with Watch(fleet, "pods", NS) as pods_w, Watch(fleet, "resourceslices") as slices_w:
        t0 = time.monotonic()
        n4 = fleet.add_node(node_spec(4))
        sliced = slices_w.first("node 4's slice", lambda e: e.type != "DELETED" and
                                e.obj["spec"].get("nodeName") == N4, after=t0)
        bound = pods_w.first("the job's pod bound to node 4",
                             lambda e: e.obj["spec"].get("nodeName") == N4, after=t0)
    assert bound.name == waiting["metadata"]["name"]
    figures = {"join_kubelet_started_s": n4.timing.kubelet - t0,
               "join_node_ready_s": n4.timing.ready - t0,
               "join_slice_published_s": sliced.at - t0,
               "join_to_first_scheduled_job_s": bound.at - t0,
               "kubelet_start_to_scheduled_job_s": bound.at - n4.timing.kubelet}
    for key, value in figures.items():
        record_property(key, round(value, 2))
    print("node join:", {k: f"{v:.2f}" for k, v in figures.items()})
    fleet.wait_for("the job's pod to run on node 4", lambda: fleet.get(
        "pod", "-n", NS, bound.name)["status"].get("phase") == "Running", timeout=180)
    socs = check_view(fleet, fleet.get("pod", "-n", NS, bound.name))
    assert len(socs) == 4 and {s.card_id for s in socs} == {s.card_id for s in n4.fake.socs}


def test_dra_rolls_node_by_node_and_running_claims_keep_their_socs(
    fleet: Fleet, dra: Stack, record_property: Any,
) -> None:
    """Operator situation: a new driver image (`pulumi up` with a new tag) while jobs run on
    nodes 1 and 4. The driver rolls one node at a time, the new pod beside the old one (surge),
    so no node is ever without a Ready driver; running pods keep their containers and their
    claims exactly their SoCs; every node's SoCs stay published. Measures per node the new
    driver's time to Ready (registered with kubelet, its ResourceSlices written)."""
    def running() -> dict[str, Any]:
        return {p["metadata"]["name"]: (container(p),
                                        sorted(map(str, allocated(fleet, claim_of(p)))))
                for p in fleet.get("pods", "-n", NS)["items"]
                if p["status"].get("phase") == "Running"}

    before = running()
    assert len(before) == 3, sorted(before)  # hold-0, hold-1 (node 1), the job (node 4)
    old = {n: p["metadata"]["uid"] for n, p in daemon_pods(fleet, DRIVER_NS).items()}
    assert sorted(old) == [N1, N2, N4]
    fleet.tag_image(images.PLUGIN, NEXT_IMAGE)
    with Watch(fleet, "pods", DRIVER_NS) as watch:
        dra.up(imageRef=NEXT_IMAGE)
        rolls = node_rolls(watch, old)
    assert one_node_at_a_time(rolls), rolls
    assert all(r.surged for r in rolls.values()), rolls  # never a node without a driver
    assert {r.new_pod["spec"]["containers"][0]["image"] for r in rolls.values()} == {NEXT_IMAGE}
    report(rolls, "dra", record_property)
    assert running() == before
    for name, node in fleet.nodes.items():
        want = {device_name(s.pci_address) for s in node.fake.socs}
        assert set(published_socs(fleet, name)) == want, name


def test_a_node_whose_kubelet_stops_for_good_gets_nothing_new(
    fleet: Fleet, dra: Stack, record_property: Any,
) -> None:
    """Operator situation: node 1's kubelet dies and stays down (a crash loop, a hung
    machine) while claim holders run there. After the controller manager's grace period the
    node is unreachable (Ready Unknown, unreachable taints) and nothing new is scheduled there,
    though its ResourceSlices stay (owned by the Node, and nobody left on the node to wipe
    them): a 2-SoC one-card claim only node 1 could hold waits. Its claims stay allocated while
    their pods exist, even a pod the taint evicted (no kubelet confirms its end). The
    operator's move, the out-of-service taint (non-graceful node shutdown), has the pods
    force-deleted and the claims released; deleting the Node takes its slices."""
    n1 = fleet.nodes[N1]
    spec = pod("short", "short", node=N1)  # tolerates the unreachable taint 5 s, not 300
    spec["spec"]["tolerations"] = [{"key": UNREACHABLE, "operator": "Exists",
                                    "effect": "NoExecute", "tolerationSeconds": 5}]
    create(fleet, claim("short", claim_spec(1)), spec)
    fleet.wait_for("the short-tolerance pod to run", lambda: fleet.get(
        "pod", "-n", NS, "short")["status"].get("phase") == "Running")
    slices = sorted(s["metadata"]["name"] for s in node_slices(fleet, N1))
    holders = ("hold-0", "hold-1", "short")

    def figure(key: str, since: float) -> None:
        record_property(key, round(time.monotonic() - since, 2))
        print(f"kubelet stopped for good: {key} {time.monotonic() - since:.1f}")

    t0 = time.monotonic()
    n1.stop_kubelet(fleet)
    try:
        _kubelet_gone_for_good(fleet, holders, slices, t0, figure)
    finally:
        if N1 in fleet.nodes:  # the later tests need no node without a kubelet
            fleet.remove_node(N1)


def _kubelet_gone_for_good(fleet: Fleet, holders: tuple[str, ...], slices: list[str],
                           t0: float, figure: Callable[[str, float], None]) -> None:
    """The steps after node 1's kubelet stopped at `t0`, each figure measured on arrival."""
    def condition() -> str:
        conds = fleet.get("node", N1)["status"].get("conditions", [])
        return next(c["status"] for c in conds if c["type"] == "Ready")

    fleet.wait_for("node 1 unreachable", lambda: condition() == "Unknown", timeout=180)
    figure("kubelet_stop_to_unreachable_s", t0)
    fleet.wait_for("the unreachable taints", lambda: {
        (t["key"], t["effect"]) for t in fleet.get("node", N1)["spec"].get("taints", [])} >= {
        (UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")})
    create(fleet, claim("two-of-a-card", claim_spec(2, same_card=True)),
           pod("late", "two-of-a-card"))
    fleet.wait_for("why the new pod waits", lambda: bool(waiting_reason(fleet, "late")))
    # 1.37's message: "1 node(s) had untolerated taint(s), 2 cannot allocate all claims"
    assert "untolerated taint" in waiting_reason(fleet, "late"), waiting_reason(fleet, "late")
    fleet.wait_for("the short-tolerance pod evicted", lambda: bool(fleet.get(
        "pod", "-n", NS, "short")["metadata"].get("deletionTimestamp")))
    figure("kubelet_stop_to_eviction_s", t0)
    for name in holders:  # still there, still holding: nobody on the node confirms an end
        assert not gone(fleet, "pod", name), name
        assert len(allocated(fleet, name)) == 1, name
    assert not fleet.get("pod", "-n", NS, "late")["spec"].get("nodeName")
    assert sorted(s["metadata"]["name"] for s in node_slices(fleet, N1)) == slices

    t1 = time.monotonic()
    fleet.kubectl("taint", "node", N1, f"{OUT_OF_SERVICE}=nodeshutdown:NoExecute")
    fleet.wait_for("node 1's pods force-deleted", lambda: all(
        gone(fleet, "pod", n) for n in holders), timeout=180)
    figure("out_of_service_to_pods_deleted_s", t1)
    fleet.wait_for("their claims released", lambda: not any(
        fleet.get("resourceclaim", "-n", NS, n)["status"].get("allocation") for n in holders))
    figure("out_of_service_to_claims_released_s", t1)
    assert sorted(s["metadata"]["name"] for s in node_slices(fleet, N1)) == slices
    assert not fleet.get("pod", "-n", NS, "late")["spec"].get("nodeName")
    t2 = time.monotonic()
    assert fleet.remove_node(N1) == []
    fleet.wait_for("node 1's slices gone", lambda: not node_slices(fleet, N1), timeout=120)
    figure("node_delete_to_slices_gone_s", t2)


@pytest.mark.fleet_ci
def test_destroy_leaves_no_claims_slices_or_specs_on_any_node(fleet: Fleet, dra: Stack) -> None:
    fleet.kubectl("delete", "namespace", NS, "--wait=true", timeout=300)
    for node in fleet.nodes.values():
        fleet.wait_for(f"no claim prepared on {node.name}", lambda n=node: not any(
            "claim" in p.name for p in n.host_path(Path("/var/run/cdi")).glob("*")))
    proc = dra.run("destroy", "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert fleet.get("resourceclaims", "-A")["items"] == []
    assert fleet.get("deviceclasses")["items"] == []
