"""SKU mode's admission rule (issue 9 item 8): deployed only in SKU mode, strict-valid, and
its CEL logic evaluated here with cel-python (the API-server check is the cluster e2e's)."""

from __future__ import annotations

from typing import Any

import celpy  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from infra_harness import kubernetes_objects, run_components

from infra.components.admission import CONTAINERS, EXPRESSION, MESSAGE, POLICY_NAME
from infra.components.device_plugin import DevicePlugin, DevicePluginArgs
from infra.config import load_settings

POLICY = "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy"
BINDING = "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicyBinding"


def plugin_objects(sku_mode: bool) -> list[dict[str, Any]]:
    s = load_settings("unit", {"skuBasedResources": "true" if sku_mode else "false"})
    mocks, _ = run_components(lambda: {"ds": DevicePlugin(
        "dp", DevicePluginArgs(settings=s, image_ref="reg/qaic:1")).daemonset_name})
    return kubernetes_objects(mocks)


def test_policy_and_binding_only_in_sku_mode_and_strictly_valid() -> None:
    on = {o["kind"]: o for o in plugin_objects(sku_mode=True)}
    # Named after the stack's namespace (default qaic-system): two SKU-mode stacks on one
    # cluster each own theirs, and destroying one leaves the other's rule in place.
    name = f"{POLICY_NAME}-qaic-system"
    assert on["ValidatingAdmissionPolicyBinding"]["spec"] == {
        "policyName": name, "validationActions": ["Deny"]}
    assert on["ValidatingAdmissionPolicyBinding"]["metadata"]["name"] == name
    policy = on["ValidatingAdmissionPolicy"]
    assert policy["metadata"]["name"] == name
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["pods"]
    assert policy["spec"]["validations"][0]["message"] == MESSAGE
    for obj in (policy, on["ValidatingAdmissionPolicyBinding"]):
        for version in ("1.30", kubernetes_validate.utils.latest_version()):
            kubernetes_validate.validate(obj, version, strict=True)
    off = {o["kind"] for o in plugin_objects(sku_mode=False)}
    assert not off & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_strict_validation_bites_on_the_policy() -> None:
    policy = next(o for o in plugin_objects(sku_mode=True)
                  if o["kind"] == "ValidatingAdmissionPolicy")
    policy["spec"]["validations"][0]["expresion"] = "true"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(policy, "1.30", strict=True)


_ENV = celpy.Environment()


def admitted(pod_spec: dict[str, Any]) -> bool:
    obj = celpy.json_to_cel({"apiVersion": "v1", "kind": "Pod", "spec": pod_spec})
    containers = _ENV.program(_ENV.compile(CONTAINERS)).evaluate({"object": obj})
    variables = celpy.celtypes.MapType({celpy.celtypes.StringType("containers"): containers})
    result = _ENV.program(_ENV.compile(EXPRESSION)).evaluate(
        {"object": obj, "variables": variables})
    return bool(result)


def ctr(name: str = "c", **resources: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "image": "x", "resources": resources} if resources else {
        "name": name, "image": "x"}


CASES = [
    ("two SKUs in limits", False,
     {"containers": [ctr(limits={"qualcomm.com/qaic-ultra": "4", "qualcomm.com/qaic-pro": "1"})]}),
    ("std + pro across requests and limits", False,
     {"containers": [ctr(requests={"qualcomm.com/qaic-std": "1"},
                         limits={"qualcomm.com/qaic-pro": "1"})]}),
    ("two SKUs in an init container", False,
     {"containers": [ctr()], "initContainers": [ctr("init", limits={
         "qualcomm.com/qaic-std": "1", "qualcomm.com/qaic-ultra": "1"})]}),
    ("one SKU, requests = limits, with cpu", True,
     {"containers": [ctr(requests={"qualcomm.com/qaic-ultra": "4", "cpu": "1"},
                         limits={"qualcomm.com/qaic-ultra": "4"})]}),
    ("one SKU per container", True,
     {"containers": [ctr("a", limits={"qualcomm.com/qaic-ultra": "4"}),
                     ctr("b", limits={"qualcomm.com/qaic-pro": "1"})]}),
    ("no resources at all", True, {"containers": [ctr()]}),
    ("another vendor's resource beside ours", True,
     {"containers": [ctr(limits={"qualcomm.com/qaic-std": "1", "example.com/gpu": "1"})]}),
]


@pytest.mark.parametrize(("expected", "spec"), [(e, s) for _, e, s in CASES],
                         ids=[c for c, _, _ in CASES])
def test_the_rule_refuses_exactly_containers_with_two_qaic_resources(
    expected: bool, spec: dict[str, Any]
) -> None:
    assert admitted(spec) is expected


def test_rendered_policy_carries_the_tested_expression() -> None:
    policy = next(o for o in plugin_objects(sku_mode=True)
                  if o["kind"] == "ValidatingAdmissionPolicy")
    assert policy["spec"]["variables"] == [{"name": "containers", "expression": CONTAINERS}]
    assert policy["spec"]["validations"][0]["expression"] == EXPRESSION



def test_two_sku_mode_stacks_each_own_their_rule() -> None:
    """Two node pools in SKU mode, one stack each (namespaces qaic-pool-a and -b): their
    policies and bindings have different names, so neither stack's update or destroy touches
    the other's (pulumi-kubernetes 4.25 would upsert one object for both, and the first
    destroy would delete it under the other pool)."""
    def names(namespace: str) -> set[str]:
        s = load_settings("unit", {"skuBasedResources": "true", "namespace": namespace})
        mocks, _ = run_components(lambda: {"ds": DevicePlugin(
            "dp", DevicePluginArgs(settings=s, image_ref="reg/qaic:1")).daemonset_name})
        return {o["metadata"]["name"] for o in kubernetes_objects(mocks)
                if o["kind"].startswith("ValidatingAdmissionPolicy")}

    a, b = names("qaic-pool-a"), names("qaic-pool-b")
    assert a == {f"{POLICY_NAME}-qaic-pool-a"} and b == {f"{POLICY_NAME}-qaic-pool-b"}
