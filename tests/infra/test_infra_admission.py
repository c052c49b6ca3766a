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
    assert on["ValidatingAdmissionPolicyBinding"]["spec"] == {
        "policyName": POLICY_NAME, "validationActions": ["Deny"]}
    policy = on["ValidatingAdmissionPolicy"]
    assert policy["metadata"]["name"] == POLICY_NAME
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

