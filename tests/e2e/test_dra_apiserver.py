"""DRA mode's objects (issue 12 part 3) with the real tools: the real Pulumi CLI renders the
committed `dra-example` stack, a real kube-apiserver 1.37 accepts every rendered object
(server-side apply), and the ResourceSlice admission policy lets the driver's service account
write only its own node's slices of its own driver (impersonated with the node name a
pod-bound token carries).
Switching `allocationApi` both ways is one `pulumi up` each, with the plan the docs describe.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.apiserver import TOOLS, ApiServer, find_binaries
from e2e.pulumi_cli import PulumiCli, available, copy_checkout
from infra.components.dra_objects import NO_NODE_MESSAGE, SLICE_POLICY_NAME

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_binaries() is None or not available(),
                       reason="kube-apiserver/etcd or the Pulumi CLI not built (e2e/tools.sh)"),
]
KUBECTL = next(iter(sorted(TOOLS.glob("kubernetes-*/bin/kubectl"))), None)
STACK = "dra-example"
SA = "system:serviceaccount:qaic-system:qaic-device-plugin"
NODE_EXTRA = "authentication.kubernetes.io/node-name"


def kubectl(
    api: ApiServer, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None, "kubectl not built (e2e/tools.sh)"
    return subprocess.run([str(KUBECTL), "--kubeconfig", str(api.kubeconfig), *args],
                          input=stdin, capture_output=True, text=True, timeout=60)


def as_driver(node: str | None) -> list[str]:
    """The driver's identity as its pod-bound token presents it (node name in the extra)."""
    args = [f"--as={SA}", "--as-group=system:serviceaccounts",
            "--as-group=system:serviceaccounts:qaic-system"]
    return [*args, f"--as-user-extra={NODE_EXTRA}={node}"] if node else args


def resource_slice(name: str, node: str, driver: str = "qaic.qualcomm.com") -> str:
    return json.dumps({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": name},
        "spec": {"driver": driver, "nodeName": node,
                 "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                 "devices": [{"name": "soc-0000-35-00-0"}]},
    })


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[PulumiCli, Path]:
    """`pulumi up` of the committed dra-example stack (render mode) with the real CLI."""
    root = tmp_path_factory.mktemp("dra")
    checkout = copy_checkout(root / "checkout")
    cli = PulumiCli(root / "scratch", passphrase="", cwd=checkout)
    cli.login()
    cli.select(STACK)
    proc = cli.run("up", "--yes", "--stack", STACK)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cli, checkout / "out" / "manifests" / STACK / "1-manifest"


def test_api_server_accepts_every_rendered_object_and_the_policy_keeps_slices_on_their_node(
    rendered: tuple[PulumiCli, Path], api: ApiServer
) -> None:
    _, manifests = rendered
    files = sorted(manifests.glob("*.yaml"))
    docs: list[dict[str, Any]] = [yaml.safe_load(f.read_text()) for f in files]
    kinds = {d["kind"] for d in docs}
    assert {"DeviceClass", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding", "ResourceClaimTemplate", "DaemonSet",
            "Pod", "Job", "Deployment"} <= kinds
    namespaces = [f for f, d in zip(files, docs, strict=True) if d["kind"] == "Namespace"]
    for group in (namespaces, [f for f in files if f not in namespaces]):
        args = [a for f in group for a in ("-f", str(f))]
        applied = kubectl(api, "apply", "--server-side", "--field-manager=e2e", *args)
        assert applied.returncode == 0, applied.stderr
    classes = kubectl(api, "get", "deviceclasses.resource.k8s.io", "-o", "name")
    assert len(classes.stdout.split()) == 13, classes.stdout  # SoCs, 9 SKUs, 3 card classes
    [got] = json.loads(kubectl(api, "get", "resourceclaimtemplate", "-n", "qaic-workloads", "-l",
                               "app.kubernetes.io/name=qaic-ultra-4soc", "-o", "json").stdout)[
        "items"]  # named by its spec's hash, found by its app label
    assert got["spec"]["spec"]["devices"]["constraints"] == [  # a prioritized list's 2nd
        {"requests": ["socs/one-card"], "matchAttribute": "qaic.qualcomm.com/cardID"}]

    # RBAC: the slices, and nothing like DeviceClasses.
    can = kubectl(api, "auth", "can-i", "create", "resourceslices.resource.k8s.io",
                  *as_driver("node-a"))
    assert can.stdout.strip() == "yes", can.stdout + can.stderr
    cannot = kubectl(api, "auth", "can-i", "create", "deviceclasses.resource.k8s.io",
                     *as_driver("node-a"))
    assert cannot.stdout.strip() == "no"

    # The policy is compiled and enforced asynchronously: await the first refusal.
    other = resource_slice("node-b-qaic", "node-b")
    deadline = time.monotonic() + 60
    while (refused := kubectl(api, "create", "-f", "-", *as_driver("node-a"),
                              stdin=other)).returncode == 0:
        kubectl(api, "delete", "resourceslice", "node-b-qaic")
        assert time.monotonic() < deadline, "policy never enforced:\n" + api.log_tail()
        time.sleep(0.5)
    assert SLICE_POLICY_NAME in refused.stderr, refused.stderr
    assert "this user running on node 'node-a' may not modify resourceslices on node " \
        "'node-b'" in refused.stderr
    # A token not bound to a pod on a node: no node name, nothing allowed.
    unbound = kubectl(api, "create", "-f", "-", *as_driver(None),
                      stdin=resource_slice("node-a-qaic", "node-a"))
    assert unbound.returncode != 0 and NO_NODE_MESSAGE in unbound.stderr, unbound.stderr
    # Its own node's slice: created, updated and deleted.
    own = kubectl(api, "create", "-f", "-", *as_driver("node-a"),
                  stdin=resource_slice("node-a-qaic", "node-a"))
    assert own.returncode == 0, own.stderr
    relabel = kubectl(api, "label", "resourceslice", "node-a-qaic", "x=y", *as_driver("node-a"))
    assert relabel.returncode == 0, relabel.stderr
    # Another node's slice (written by someone else) cannot be deleted by the driver.
    admin = kubectl(api, "create", "-f", "-", stdin=other)
    assert admin.returncode == 0, admin.stderr  # the policy only binds the driver's account
    steal = kubectl(api, "delete", "resourceslice", "node-b-qaic", *as_driver("node-a"))
    assert steal.returncode != 0 and "resourceslices on node 'node-b'" in steal.stderr
    gone = kubectl(api, "delete", "resourceslice", "node-a-qaic", *as_driver("node-a"))
    assert gone.returncode == 0, gone.stderr

    # Issue 19: another driver's slice on the driver's own node is not its to write either.
    gpu = resource_slice("node-a-gpu", "node-a", driver="gpu.example.com")
    forged = kubectl(api, "create", "-f", "-", *as_driver("node-a"), stdin=gpu)
    assert forged.returncode != 0, "the driver created another driver's slice"
    assert "may only modify resourceslices of driver 'qaic.qualcomm.com', not of driver " \
        "'gpu.example.com'" in forged.stderr, forged.stderr
    assert kubectl(api, "create", "-f", "-", stdin=gpu).returncode == 0  # its own driver's
    for attempt in (["label", "resourceslice", "node-a-gpu", "x=y"],
                    ["delete", "resourceslice", "node-a-gpu"]):
        refused = kubectl(api, *attempt, *as_driver("node-a"))
        assert refused.returncode != 0 and "not of driver 'gpu.example.com'" in refused.stderr, (
            attempt, refused.stderr)
    assert kubectl(api, "get", "resourceslice", "node-a-gpu").returncode == 0
    kubectl(api, "delete", "resourceslice", "node-a-gpu")


def steps(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {s["urn"].split("::")[-1]: s["op"] for s in json.loads(proc.stdout)["steps"]}


def test_switching_allocation_api_is_one_up_each_way(
    rendered: tuple[PulumiCli, Path], tmp_path: Path
) -> None:
    """Issue 13 item 10 for the new key: after the dra-example `up`, devicePlugin is planned
    as: the device-plugin DaemonSet created, the fixed-name Pod and Job replaced, the DRA
    DaemonSet, classes, RBAC, policy and claim templates deleted; then `up` succeeds, and
    switching back succeeds too."""
    cli, manifests = rendered
    data = yaml.safe_load((cli.cwd / "stacks" / f"Pulumi.{STACK}.yaml").read_text())
    data["config"]["qaic-k8s:allocationApi"] = "devicePlugin"
    switched = tmp_path / "device-plugin.yaml"
    switched.write_text(yaml.safe_dump(data))
    plan = steps(cli.run("preview", "--json", "--stack", STACK, "--config-file", str(switched)))
    assert plan["qaic-device-plugin-daemonset"] == "create"
    assert plan["qaic-device-plugin-dra-daemonset"] == "delete"
    assert plan["qaic-samples-pod-example"] == "replace"
    assert plan["qaic-samples-ultra-job"] == "replace"
    assert plan["qaic-samples-deployment"] == "update"
    assert plan["qaic-samples-qaic-ultra-4soc-claims"] == "delete"
    assert plan["qaic-device-plugin-dra-class-ultra"] == "delete"
    assert plan["qaic-device-plugin-dra-slice-policy"] == "delete"
    up = cli.run("up", "--yes", "--stack", STACK, "--config-file", str(switched))
    assert up.returncode == 0, up.stdout + up.stderr
    names = {p.name for p in manifests.glob("*.yaml")}
    assert "apps_v1-daemonset-qaic-system-qaic-device-plugin.yaml" in names
    assert not any("resource.k8s.io" in n or "qaic-dra-driver" in n for n in names)
    back = cli.run("up", "--yes", "--stack", STACK)
    assert back.returncode == 0, back.stdout + back.stderr
    names = {p.name for p in manifests.glob("*.yaml")}
    assert "apps_v1-daemonset-qaic-system-qaic-dra-driver.yaml" in names
    assert "apps_v1-daemonset-qaic-system-qaic-device-plugin.yaml" not in names
