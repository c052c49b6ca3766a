"""DRA mode (`allocationApi: dra`, issue 12 part 3) under Pulumi mocks: the DeviceClasses and
their CEL (evaluated with cel-python on the devices the plugin itself publishes), the RBAC,
the ResourceSlice admission policy, the DRA DaemonSet, the samples as ResourceClaimTemplates,
the config checks, and strict schema validation of every object."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import celpy  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from infra_harness import Run, cli_config, kubernetes_objects, run_program

from infra.components.dra_objects import (
    CARD_ATTRIBUTE,
    NO_NODE_MESSAGE,
    SLICE_POLICY_NAME,
    device_classes,
)
from infra.config import ConfigError, load_settings
from qaic_device_plugin.config.contracts import SKU_NAMES
from qaic_device_plugin.dra.backend import DRIVER_NAME, to_device
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.qaic.qaic_util import parse_qaic_util
from qaic_device_plugin.sim.node import CardSpec, FakeNode
from workloads.samples import unversioned

DRA = {
    "qaic-k8s:allocationApi": "dra",
    "qaic-k8s:imageRef": "reg.example/qaic:1@sha256:" + "0" * 64,
    "qaic-k8s:workloadPodExample": "true",
    "qaic-k8s:workloadDeployment": "true",
    "qaic-k8s:workloadUltraJob": "true",
    "qaic-k8s:workloadImage": "reg.example/sample:1",
}
SA_USER = "system:serviceaccount:qaic-system:qaic-device-plugin"


def run_dra(**changes: Any) -> Run:
    config, secrets = cli_config({**DRA, **{f"qaic-k8s:{k}": v for k, v in changes.items()}})
    return run_program(config, secrets, "unit")


def objects(run: Run, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in kubernetes_objects(run.mocks) if o["kind"] == kind}


def pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]
    return spec["template"]["spec"] if "template" in spec else spec


# --- DeviceClasses ---------------------------------------------------------------------------

def published_devices(tmp_path: Path) -> list[dict[str, Any]]:
    """Devices as the DRA driver publishes them (dra_backend.to_device) for a node with one
    Ultra card (4 SoCs) and one Standard card, in the shape CEL sees them: attributes grouped
    by domain, unqualified names under the driver's."""
    node = FakeNode(tmp_path / "node", [CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD)])
    node.write()
    qaic_util = subprocess.run([str(node.qaic_util_path), "-q"], capture_output=True,
                               text=True, check=True).stdout  # the SKUs, as on a real node
    state = Inventory(node.sysfs_root, node.dev_root, {}).scan(parse_qaic_util(qaic_util))
    out = []
    for soc in state.socs:
        raw = to_device(soc).to_dict()
        attrs: dict[str, dict[str, Any]] = {}
        for name, value in raw["attributes"].items():
            domain, _, short = name.rpartition("/")
            attrs.setdefault(domain or DRIVER_NAME, {})[short] = next(iter(value.values()))
        out.append({"driver": DRIVER_NAME, "attributes": attrs})
    return out


_CEL = celpy.Environment()


def selects(spec: dict[str, Any], device: dict[str, Any]) -> bool:
    activation = {"device": celpy.json_to_cel(device)}
    return all(
        bool(_CEL.program(_CEL.compile(sel["cel"]["expression"])).evaluate(activation))
        for sel in spec["selectors"]
    )


def test_device_classes_all_socs_and_one_per_sku_with_cel_selectors() -> None:
    classes = objects(run_dra(), "DeviceClass")
    cards = {f"ultra-{k}.{DRIVER_NAME}" for k in ("card", "3soc", "2soc")}  # one_card tests
    assert len(classes) == 1 + len(SKU_NAMES) + len(cards) == 13
    assert set(classes) == {DRIVER_NAME} | {f"{sku}.{DRIVER_NAME}" for sku in SKU_NAMES} | cards
    soc = ('!has(device.attributes["qaic.qualcomm.com"].type) || '
           'device.attributes["qaic.qualcomm.com"].type == "soc"')
    assert classes[DRIVER_NAME]["spec"]["selectors"] == [
        {"cel": {"expression": 'device.driver == "qaic.qualcomm.com"'}},
        {"cel": {"expression": soc}}]
    assert classes["ultra.qaic.qualcomm.com"]["spec"]["selectors"] == [
        {"cel": {"expression": 'device.driver == "qaic.qualcomm.com"'}},
        {"cel": {"expression": 'device.attributes["qaic.qualcomm.com"].sku == "ultra"'}},
        {"cel": {"expression": soc}},
    ]


def test_class_selectors_pick_exactly_the_published_devices_of_their_sku(
    tmp_path: Path,
) -> None:
    devices = published_devices(tmp_path)
    assert len(devices) == 5
    specs = dict(device_classes())
    skus = [d["attributes"][DRIVER_NAME]["sku"] for d in devices]
    assert sorted(skus) == ["std", "ultra", "ultra", "ultra", "ultra"]
    assert all(selects(specs[DRIVER_NAME], d) for d in devices)
    assert [selects(specs["ultra.qaic.qualcomm.com"], d) for d in devices] == [
        s == "ultra" for s in skus]
    assert [selects(specs["std.qaic.qualcomm.com"], d) for d in devices] == [
        s == "std" for s in skus]
    assert not any(selects(specs["pro.qaic.qualcomm.com"], d) for d in devices)
    other = {**devices[0], "driver": "gpu.example.com"}
    assert not selects(specs[DRIVER_NAME], other)
    # The card constraint names an attribute the driver publishes (the four Ultra SoCs share it).
    domain, _, short = CARD_ATTRIBUTE.rpartition("/")
    cards = {d["attributes"][domain][short] for d in devices
             if d["attributes"][DRIVER_NAME]["sku"] == "ultra"}
    assert len(cards) == 1


# --- RBAC and the ResourceSlice policy -------------------------------------------------------

def test_rbac_is_minimal_and_bound_to_the_plugin_service_account() -> None:
    run = run_dra()
    (role,) = objects(run, "ClusterRole").values()
    assert role["rules"] == [
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims"], "verbs": ["get"]},
        # The driver's entries in status.devices (kubelet/dra/claim_status.py): a patch of
        # the status subresource, and the per-driver check of 1.36+ for its node's claims.
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/status"],
         "verbs": ["patch"]},
        {"apiGroups": ["resource.k8s.io"], "resources": ["resourceclaims/driver"],
         "verbs": ["associated-node:patch"], "resourceNames": [DRIVER_NAME]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
    ]
    (binding,) = objects(run, "ClusterRoleBinding").values()
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "qaic-device-plugin",
                                    "namespace": "qaic-system"}]
    assert not objects(run, "Role") and not objects(run, "RoleBinding")


def test_slice_policy_limits_the_service_account_to_its_node() -> None:
    run = run_dra(namespace="ai-infra")
    policies = objects(run, "ValidatingAdmissionPolicy")
    assert set(policies) == {SLICE_POLICY_NAME}  # no one-resource-per-container rule in DRA
    spec = policies[SLICE_POLICY_NAME]["spec"]
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule == {"apiGroups": ["resource.k8s.io"], "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["resourceslices"]}
    (cond,) = spec["matchConditions"]
    assert cond["expression"] == (
        'request.userInfo.username == "system:serviceaccount:ai-infra:qaic-device-plugin"')
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert "authentication.kubernetes.io/node-name" in variables["userNodeName"]
    assert "oldObject" in variables["objectNodeName"]  # DELETE has no object
    assert [v["expression"] for v in spec["validations"]] == [
        'variables.userNodeName != ""', "variables.userNodeName == variables.objectNodeName",
        f'variables.objectDriver == "{DRIVER_NAME}"']
    assert spec["validations"][0]["message"] == NO_NODE_MESSAGE
    assert spec["failurePolicy"] == "Fail"
    (binding,) = objects(run, "ValidatingAdmissionPolicyBinding").values()
    assert binding["spec"] == {"policyName": SLICE_POLICY_NAME, "validationActions": ["Deny"]}


def slice_request(operation: str, driver: str) -> dict[str, Any]:
    """An admission request for a slice of `driver` on node-a (DELETE carries oldObject)."""
    obj = {"spec": {"driver": driver, "nodeName": "node-a"}}
    return {"request": {"operation": operation},
            "object": None if operation == "DELETE" else obj, "oldObject": obj}


def test_slice_policy_refuses_other_drivers_slices_on_its_node() -> None:
    """Issue 19: the policy checked nodeName only, so the driver's account could create,
    rewrite or delete another driver's slices on its own node. Evaluated with cel-python: the
    driver variable and its validation pass our driver's slices and refuse another's, for
    CREATE, UPDATE and DELETE (from oldObject); the message names the other driver."""
    spec = objects(run_dra(), "ValidatingAdmissionPolicy")[SLICE_POLICY_NAME]["spec"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    (check,) = [v for v in spec["validations"] if "objectDriver" in v["expression"]]

    def allowed(operation: str, driver: str) -> tuple[bool, str]:
        activation = celpy.json_to_cel(slice_request(operation, driver))
        driver_var = _CEL.program(_CEL.compile(variables["objectDriver"])).evaluate(activation)
        with_vars = {**activation, "variables": celpy.celtypes.MapType(
            {celpy.celtypes.StringType("objectDriver"): driver_var})}
        ok = bool(_CEL.program(_CEL.compile(check["expression"])).evaluate(with_vars))
        message = _CEL.program(_CEL.compile(check["messageExpression"])).evaluate(with_vars)
        return ok, str(message)

    for op in ("CREATE", "UPDATE", "DELETE"):
        assert allowed(op, DRIVER_NAME)[0], op
        ok, message = allowed(op, "gpu.example.com")
        assert not ok, op
        assert message == (f"the qaic DRA driver may only modify resourceslices of driver "
                           f"'{DRIVER_NAME}', not of driver 'gpu.example.com'")


# --- the DaemonSet ---------------------------------------------------------------------------

def test_dra_daemonset_env_mounts_and_hardening() -> None:
    run = run_dra(skuOverrides=["0000:35:00.0=pro"], cdiDir="/etc/cdi")
    (ds,) = objects(run, "DaemonSet").values()
    assert ds["metadata"]["name"] == "qaic-dra-driver"
    pod = pod_of(ds)
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["QAIC_ALLOCATION_API"]["value"] == "dra"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    # Per-pod socket names, so the DaemonSet can surge: new pod Ready before the old one goes.
    assert env["QAIC_DRA_POD_UID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert env["QAIC_CDI_DIR"]["value"] == "/etc/cdi"
    assert env["QAIC_SKU_OVERRIDES"]["value"] == '{"0000:35:00.0": "pro"}'
    assert env["QAIC_DRA_PLUGINS_DIR"]["value"] == "/var/lib/kubelet/plugins"
    assert env["QAIC_DRA_REGISTRY_DIR"]["value"] == "/var/lib/kubelet/plugins_registry"
    assert "QAIC_DEVICE_PLUGIN_DIR" not in env
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    writable = {n for n, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"plugins-registry", "driver-dir", "cdi", "tmp"}
    assert host["plugins-registry"] == mounts["plugins-registry"]["mountPath"] == (
        "/var/lib/kubelet/plugins_registry")
    assert host["driver-dir"] == mounts["driver-dir"]["mountPath"] == (
        "/var/lib/kubelet/plugins/qaic.qualcomm.com")
    assert host["cdi"] == mounts["cdi"]["mountPath"] == "/etc/cdi"
    assert {"sys", "dev", "qaic-sdk"} <= set(host)
    # Read-only: which SoCs pods of the device-plugin mode still hold (moving between modes).
    assert host["pod-resources"] == mounts["pod-resources"]["mountPath"] == (
        "/var/lib/kubelet/pod-resources")
    assert "device-plugins" not in host and "udev" not in host
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["hostNetwork"] is False
    assert pod["automountServiceAccountToken"] is True  # the driver calls the API server
    assert pod["serviceAccountName"] == "qaic-device-plugin"
    assert env["QAIC_METRICS_PORT"]["value"] == "9410"  # the pod's own netns: all addresses
    assert "QAIC_METRICS_ADDRESS" not in env
    assert c["ports"] == [{"name": "metrics", "containerPort": 9410, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert run.outputs["daemonSetName"] == "qaic-dra-driver"
    (c,) = pod_of(next(iter(objects(run_dra(metricsPort=0), "DaemonSet").values())))["containers"]
    assert "readinessProbe" not in c and "livenessProbe" not in c and "ports" not in c


def test_device_plugin_mode_has_no_dra_objects() -> None:
    config, _ = cli_config({**DRA, "qaic-k8s:allocationApi": "devicePlugin"})
    run = run_program(config, [], "unit")
    kinds = {o["kind"] for o in kubernetes_objects(run.mocks)}
    assert not kinds & {"DeviceClass", "ResourceClaimTemplate", "ClusterRole",
                        "ClusterRoleBinding", "ValidatingAdmissionPolicy"}
    (ds,) = objects(run, "DaemonSet").values()
    assert ds["metadata"]["name"] == "qaic-device-plugin"
    assert run.outputs["deviceClasses"] == [] and run.outputs["allocationApi"] == "devicePlugin"


# --- the samples -----------------------------------------------------------------------------

def test_samples_claim_socs_through_their_resource_claim_templates() -> None:
    run = run_dra()
    names = {unversioned(k): k for k in objects(run, "ResourceClaimTemplate")}
    templates = {unversioned(k): v for k, v in objects(run, "ResourceClaimTemplate").items()}
    assert set(templates) == {"qaic-pod-example", "qaic-inference", "qaic-ultra-4soc"}
    for t in templates.values():
        assert t["metadata"]["namespace"] == "qaic-workloads"
    one = templates["qaic-pod-example"]["spec"]["spec"]["devices"]
    assert one == {"requests": [{"name": "socs", "exactly": {
        "deviceClassName": "qaic.qualcomm.com", "allocationMode": "ExactCount", "count": 1}}]}
    assert templates["qaic-inference"]["spec"] == templates["qaic-pod-example"]["spec"]
    job = templates["qaic-ultra-4soc"]["spec"]["spec"]["devices"]  # a prioritized list
    assert job["requests"] == [{"name": "socs", "firstAvailable": [
        {"name": "card", "deviceClassName": "ultra-card.qaic.qualcomm.com",
         "allocationMode": "ExactCount", "count": 1},
        {"name": "one-card", "deviceClassName": "qaic.qualcomm.com",
         "allocationMode": "ExactCount", "count": 4},
        {"name": "std", "deviceClassName": "std.qaic.qualcomm.com",
         "allocationMode": "ExactCount", "count": 4}]}]
    assert job["constraints"] == [{"requests": ["socs/one-card"],
                                   "matchAttribute": "qaic.qualcomm.com/cardID"}]
    samples = {**objects(run, "Pod"), **objects(run, "Deployment"), **objects(run, "Job")}
    workloads = {unversioned(k): v for k, v in samples.items()}
    assert set(workloads) == set(templates)
    for name, obj in workloads.items():
        pod = pod_of(obj)
        assert pod["resourceClaims"] == [{"name": "socs",
                                          "resourceClaimTemplateName": names[name]}]
        (c,) = pod["containers"]
        assert c["resources"]["claims"] == [{"name": "socs"}]
        for part in ("requests", "limits"):
            assert not [k for k in c["resources"][part] if k.startswith("qualcomm.com/")]


def test_workload_sku_set_picks_the_one_soc_samples_class_in_dra_mode() -> None:
    """Set, the key keeps the one-SoC samples off the SKUs a node has few of (the scheduler
    takes the first free device of the all-SoCs class, which may be the only Pro SoC)."""
    templates = {unversioned(k): v for k, v in
                 objects(run_dra(workloadSku="ultra"), "ResourceClaimTemplate").items()}
    for name in ("qaic-pod-example", "qaic-inference"):
        [request] = templates[name]["spec"]["spec"]["devices"]["requests"]
        assert request["exactly"]["deviceClassName"] == "ultra.qaic.qualcomm.com"


# --- validation ------------------------------------------------------------------------------

def test_every_dra_object_is_strictly_valid_for_kubernetes_1_34_and_later() -> None:
    objs = kubernetes_objects(run_dra(createPullSecret="false").mocks)
    assert {"DeviceClass", "ResourceClaimTemplate"} <= {o["kind"] for o in objs}
    for version in ("1.34", kubernetes_validate.utils.latest_version()):
        for obj in objs:
            kubernetes_validate.validate(obj, version, strict=True)
    template = next(o for o in objs if o["kind"] == "ResourceClaimTemplate")
    template["spec"]["spec"]["devices"]["requests"][0]["deviceClassName"] = "x"  # v1beta1 form
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(template, "1.34", strict=True)


@pytest.mark.parametrize(("raw", "line"), [
    ({"allocationApi": "DRA"},
     "stack 'unit': 'qaic-k8s:allocationApi' is 'DRA', but it must be devicePlugin (kubelet "
     "device-plugin API, extended resources) or dra (Dynamic Resource Allocation driver, "
     "resource.k8s.io/v1)."),
    ({"allocationApi": "dra", "ultraOneCardNamespaces": '["team=dra"]'},
     "stack 'unit': 'qaic-k8s:ultraOneCardNamespaces' is '[\"team=dra\"]', which has no "
     "effect unless 'qaic-k8s:allocationApi' is 'dra', 'qaic-k8s:skuBasedResources' is true"),
    ({"workloadMonitor": "true", "workloadImage": "x"},
     "stack 'unit': 'qaic-k8s:workloadMonitor' is 'true', which needs "
     "'qaic-k8s:allocationApi' = 'dra' (device plugins have no admin access"),
    ({"allocationApi": "dra", "workloadMonitor": "true", "workloadImage": "x",
      "monitorNamespace": "qaic-workloads"},
     "stack 'unit': 'qaic-k8s:monitorNamespace' is 'qaic-workloads', which must differ from "
     "'qaic-k8s:workloadNamespace'"),
])
def test_bad_allocation_api_settings_are_one_line(raw: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("unit", raw)
    assert str(info.value).startswith(line)
    assert "\n" not in str(info.value)


def test_sku_overrides_are_allowed_in_dra_mode() -> None:
    s = load_settings("unit", {"allocationApi": "dra", "skuOverrides": '["0000:35:00.0=pro"]'})
    assert s.dra and s.resource_names == [] and s.sku_overrides == ("0000:35:00.0=pro",)


def test_dra_objects_are_children_of_the_dra_driver_component() -> None:
    from infra_harness import registered_urns

    run_dra()
    urns = registered_urns()
    driver = "qaic-k8s:index:DraDriver"  # (the mocks' URNs name the direct parent only)
    assert any(u.endswith(f"DevicePlugin${driver}::qaic-device-plugin-dra") for u in urns)
    for child, name in [
        ("kubernetes:resource.k8s.io/v1:DeviceClass", "qaic-device-plugin-dra-class-ultra"),
        ("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole", "qaic-device-plugin-dra-role"),
        ("kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy",
         "qaic-device-plugin-dra-slice-policy"),
        ("kubernetes:apps/v1:DaemonSet", "qaic-device-plugin-dra-daemonset"),
    ]:
        assert any(f"{driver}${child}::{name}" in u for u in urns), child
    templates = "qaic-k8s:index:Workloads$kubernetes:resource.k8s.io/v1:ResourceClaimTemplate"
    assert any(f"{templates}::qaic-samples-qaic-ultra-4soc-claims" in u for u in urns)


def test_the_driver_daemonset_names_its_stack() -> None:
    """Another stack's preview (infra/cluster_pools.py) tells this DaemonSet by it."""
    ds = objects(run_dra(), "DaemonSet")["qaic-dra-driver"]
    assert ds["metadata"]["annotations"] == {"qualcomm.com/qaic-k8s-stack": "unit"}
