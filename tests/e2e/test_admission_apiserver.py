"""Issue 9 item 8 at a real kube-apiserver 1.37: SKU mode's ValidatingAdmissionPolicy (built by
infra/components/admission.py, the same specs the DevicePlugin component deploys) refuses a
container that names two qualcomm.com/qaic* resources, init containers included, and admits
one that names one."""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pytest

from e2e.apiserver import TOOLS, ApiServer, find_binaries
from infra.components.admission import MESSAGE, POLICY_NAME, binding_spec, policy_spec

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_binaries() is None, reason="kube-apiserver/etcd not built"),
]
KUBECTL = next(iter(sorted(TOOLS.glob("kubernetes-*/bin/kubectl"))), None)


def camel(value: Any) -> Any:
    """pulumi-kubernetes input names (snake_case) -> the API's JSON names."""
    if isinstance(value, dict):
        return {
            re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): camel(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


def kubectl(
    api: ApiServer, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None, "kubectl not built (e2e/tools.sh)"
    return subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(api.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def pod(name: str, resources: dict[str, str], *, init: bool = False) -> str:
    container = {"name": "c", "image": "busybox", "resources": {"limits": resources}}
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}
    if init:
        spec["initContainers"] = [container]
    else:
        spec["containers"] = [container]
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


def create(api: ApiServer, manifest: str) -> subprocess.CompletedProcess[str]:
    return kubectl(api, "create", "--dry-run=server", "-o", "name", "-f", "-", stdin=manifest)


MIXED = {"qualcomm.com/qaic-ultra": "4", "qualcomm.com/qaic-pro": "1"}


def test_mixed_sku_container_is_refused_at_the_api_server(api: ApiServer) -> None:
    before = create(api, pod("mixed-before", MIXED))
    assert before.returncode == 0, before.stderr  # nothing refuses it without the policy
    objs = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": POLICY_NAME},
            "spec": camel(policy_spec()),
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY_NAME},
            "spec": camel(binding_spec()),
        },
    ]
    applied = kubectl(
        api,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}),
    )
    assert applied.returncode == 0, applied.stderr
    # The API server compiles and starts enforcing a new policy asynchronously: await the
    # first refusal (bounded), then check every case against the enforcing server.
    deadline = time.monotonic() + 60
    while (refused := create(api, pod("mixed", MIXED))).returncode == 0:
        assert time.monotonic() < deadline, "policy never enforced:\n" + api.log_tail()
        time.sleep(0.5)
    assert MESSAGE in refused.stderr, refused.stderr
    assert POLICY_NAME in refused.stderr
    init = create(api, pod("mixed-init", MIXED, init=True))
    assert init.returncode != 0 and MESSAGE in init.stderr, init.stderr
    # (A container naming one SKU in requests and another in limits never reaches the policy:
    # the API server itself requires requests == limits for extended resources.)
    for name, res in [
        ("one-sku", {"qualcomm.com/qaic-ultra": "4"}),
        ("plain", {"qualcomm.com/qaic": "2"}),
    ]:
        ok = create(api, pod(name, res))
        assert ok.returncode == 0, ok.stderr
    two_containers = json.loads(pod("two-containers", {"qualcomm.com/qaic-ultra": "4"}))
    two_containers["spec"]["containers"].append(
        {
            "name": "other",
            "image": "busybox",
            "resources": {"limits": {"qualcomm.com/qaic-pro": "1"}},
        }
    )
    ok2 = create(api, json.dumps(two_containers))
    assert ok2.returncode == 0, ok2.stderr  # one SKU per container is the documented way out
