"""The stack-config model: defaults, Pulumi.yaml agreement, and every validation error."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from infra_harness import project_file

from infra.config import ConfigError, load_settings, raw_config, secret_keys
from infra.settings import FIELDS_BY_ALIAS, StackSettings

BASE: dict[str, str] = {}


def settings(**raw: Any) -> StackSettings:
    return load_settings("teststack", {k: _text(v) for k, v in raw.items()}, {"registryPassword"})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def test_defaults_are_the_documented_ones() -> None:
    s = settings()
    assert s.namespace == "qaic-system" and s.create_namespace
    assert s.metrics_port == 9410 and s.allowed_device_shares == 1
    assert s.node_selector_map == {"qualcomm.com/qaic": "true"}
    assert s.toleration_list == [
        {"key": "qualcomm.com/qaic", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert (s.memory_request, s.memory_limit) == ("50Mi", "128Mi")
    assert s.priority_class_name == "system-node-critical"
    assert s.host_network is True
    assert s.resource_names == ["qualcomm.com/qaic"]
    assert s.builds_image and not s.render_mode and not s.any_workload


def test_sku_mode_switches_every_resource_name() -> None:
    on = settings(skuBasedResources=True, workloadSku="pro")
    assert on.resource_names == [
        "qualcomm.com/qaic-std", "qualcomm.com/qaic-pro", "qualcomm.com/qaic-ultra"
    ]
    assert on.workload_resource == "qualcomm.com/qaic-pro"
    assert on.ultra_job_resource == "qualcomm.com/qaic-ultra"
    off = settings(workloadSku="pro")
    assert off.workload_resource == off.ultra_job_resource == "qualcomm.com/qaic"


def test_tolerations_parse_kubectl_taint_syntax() -> None:
    s = settings(tolerations=["a.io/x=y:NoExecute", "b", "c:PreferNoSchedule"])
    assert s.toleration_list == [
        {"key": "a.io/x", "operator": "Equal", "value": "y", "effect": "NoExecute"},
        {"key": "b", "operator": "Exists"},
        {"key": "c", "operator": "Exists", "effect": "PreferNoSchedule"},
    ]


def test_sku_overrides_become_a_json_object() -> None:
    s = settings(skuBasedResources=True, skuOverrides=["0000:35:00.0=ultra"])
    assert json.loads(s.sku_overrides_json) == {"0000:35:00.0": "ultra"}


def test_pulumi_yaml_declares_exactly_the_model_keys_with_its_defaults() -> None:
    """registryPassword is the one key left undeclared: the CLI refuses a declared secret
    with a plain default, and requires a declared key without one in every stack."""
    declared = project_file()["config"]
    assert set(declared) == set(FIELDS_BY_ALIAS) - {"registryPassword"}
    assert not any(decl.get("secret") for decl in declared.values())
    kinds = {bool: "boolean", int: "integer", str: "string", tuple: "array"}
    defaults = StackSettings()
    for key, decl in declared.items():
        assert decl.get("description"), key
        value = getattr(defaults, FIELDS_BY_ALIAS[key])
        assert decl["type"] == kinds[type(value)], key
        expected = list(value) if isinstance(value, tuple) else value
        assert decl["default"] == expected, key
        if decl["type"] == "array":
            assert decl["items"] == {"type": "string"}, key


def test_project_file_shape() -> None:
    proj = project_file()
    assert proj["name"] == "qaic-k8s"
    assert proj["main"] == "infra/" and proj["stackConfigDir"] == "stacks"
    assert proj["runtime"] == {
        "name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}
    }


# One case per check: (raw config, regex the one-sentence message must match). Wrongly typed
# booleans and integers are caught by the CLI before the program runs (tests/e2e); the
# program's own check still words them, for config that reaches it another way.
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("wrong type: integer", {"metricsPort": "ninety"},
     r"'qaic-k8s:metricsPort' is 'ninety', but it must be an integer from 0 to 65535"),
    ("out of range", {"allowedDeviceShares": "0"},
     r"'qaic-k8s:allowedDeviceShares' is '0', but it must be an integer from 1 to 64\.$"),
    ("wrong type: boolean", {"skuBasedResources": "maybe"},
     r"'qaic-k8s:skuBasedResources' is 'maybe', but it must be true or false\.$"),
    ("enum", {"logLevel": "verbose"},
     r"'qaic-k8s:logLevel' is 'verbose', but it must be debug, info, warning or error\.$"),
    ("udev source enum", {"udevSource": "netlink"},
     r"'qaic-k8s:udevSource' is 'netlink', but it must be udev or kernel\.$"),
    ("pull policy enum", {"imagePullPolicy": "Sometimes"},
     r"'qaic-k8s:imagePullPolicy' is 'Sometimes', but it must be IfNotPresent, Always or Never"),
    ("cool-down range", {"ueCooldownSeconds": "0"},
     r"'qaic-k8s:ueCooldownSeconds' is '0', but it must be an integer from 1 to 86400\.$"),
    ("array not JSON", {"nodeSelector": "qualcomm.com/qaic=true"},
     r"'qaic-k8s:nodeSelector' is 'qualcomm.com/qaic=true', but it must be a JSON array"),
    ("bad selector entry", {"nodeSelector": ["novalue"]},
     r"'qaic-k8s:nodeSelector' is '\[\"novalue\"\]', but it must be"),
    ("bad taint effect", {"tolerations": ["k:Sometimes"]},
     r"'qaic-k8s:tolerations' .* must be a JSON array of \"<key>\[=<value>\]\[:<Effect>\]\""),
    ("bad quantity", {"memoryLimit": "lots"},
     r"'qaic-k8s:memoryLimit' is 'lots', but it must be a memory quantity"),
    ("relative path", {"nfdFeaturesDir": "features.d"},
     r"'qaic-k8s:nfdFeaturesDir' is 'features.d', but it must be an absolute host path"),
    ("relative host sysfs", {"hostSysfsPath": "sys"},
     r"'qaic-k8s:hostSysfsPath' is 'sys', but it must be an absolute host path\.$"),
    ("relative SDK dir", {"hostSdkPath": "opt/qti-aic"},
     r"'qaic-k8s:hostSdkPath' is 'opt/qti-aic', but it must be an absolute host path"),
    ("bad namespace", {"namespace": "Qaic_System"},
     r"'qaic-k8s:namespace' is 'Qaic_System', but it must be a DNS-1123 label"),
    ("unknown key with suggestion", {"metricPort": "9410"},
     r": 'qaic-k8s:metricPort' is not a known key; did you mean 'qaic-k8s:metricsPort'\?$"),
    ("unknown key", {"zzz": "1"},
     r": 'qaic-k8s:zzz' is not a known key; the keys are declared in Pulumi.yaml\.$"),
    ("push without registry", {"push": True},
     r"'qaic-k8s:push' is 'true', which needs 'qaic-k8s:registry' \(where to push\)\.$"),
    ("pinned image and push", {"imageRef": "r/x:1", "registry": "ghcr.io/a", "push": True},
     r"'qaic-k8s:push' is 'true', which conflicts with 'qaic-k8s:imageRef'"),
    ("pinned image and load", {"imageRef": "r/x:1", "loadImage": True},
     r"'qaic-k8s:loadImage' is 'true', which conflicts with 'qaic-k8s:imageRef'"),
    ("load and push", {"registry": "ghcr.io/a", "push": True, "loadImage": True},
     r"'qaic-k8s:loadImage' is 'true', which conflicts with 'qaic-k8s:push'"),
    ("user without password", {"registry": "ghcr.io/a", "registryUsername": "u"},
     r"'qaic-k8s:registryUsername' is 'u', which needs 'qaic-k8s:registryPassword' as well"),
    ("password without user", {"registry": "ghcr.io/a", "registryPassword": "p"},
     r"'qaic-k8s:registryPassword' is '<redacted>', which needs 'qaic-k8s:registryUsername'"),
    ("credentials without registry", {"registryUsername": "u", "registryPassword": "p"},
     r"'qaic-k8s:registryUsername' is 'u', which needs 'qaic-k8s:registry'\.$"),
    ("pull secret without credentials", {"createPullSecret": True},
     r"'qaic-k8s:createPullSecret' is 'true', which needs 'qaic-k8s:registryUsername'"),
    ("overrides without SKU mode", {"skuOverrides": ["0000:35:00.0=ultra"]},
     r"'qaic-k8s:skuOverrides' .* which has no effect unless 'qaic-k8s:skuBasedResources'"),
    ("bad override", {"skuBasedResources": True, "skuOverrides": ["35:00.0=ultra"]},
     r"'qaic-k8s:skuOverrides' .* but it must be a JSON array of \"<pci address>=<sku>\""),
    ("unknown override SKU", {"skuBasedResources": True, "skuOverrides": ["0000:35:00.0=huge"]},
     r"'qaic-k8s:skuOverrides' .* sku one of std, pro, ultra, lite"),
    ("unknown sample SKU", {"workloadSku": "huge"},
     r"'qaic-k8s:workloadSku' is 'huge', but it must be a SKU name \(std, pro, .*\) or empty"),
    ("4-SoC job with shares", {"workloadUltraJob": True, "allowedDeviceShares": "2",
                               "workloadImage": "x"},
     r"'qaic-k8s:workloadUltraJob' is 'true', which needs 'qaic-k8s:allowedDeviceShares' = 1"),
    ("workload without image", {"workloadPodExample": True},
     r"'qaic-k8s:workloadImage' is '', which is not allowed when a sample workload is enabled"),
    ("render and context", {"renderYamlDir": "out/x", "kubeContext": "prod"},
     r"'qaic-k8s:kubeContext' is 'prod', which conflicts with 'qaic-k8s:renderYamlDir'"),
    ("limit below request", {"memoryRequest": "200Mi"},
     r"'qaic-k8s:memoryLimit' is '128Mi', which is below 'qaic-k8s:memoryRequest' \(200Mi\)"),
    ("cpu limit below request", {"cpuLimit": "10m"},
     r"'qaic-k8s:cpuLimit' is '10m', which is below 'qaic-k8s:cpuRequest' \(20m\)"),
]


@pytest.mark.parametrize(("raw", "message"), [(r, m) for _, r, m in BAD],
                         ids=[c for c, _, _ in BAD])
def test_bad_config_fails_with_one_line_naming_stack_key_and_value(
    raw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**raw)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("stack 'teststack': 'qaic-k8s:")
    assert re.search(message, text), text


def test_plain_text_password_is_rejected_and_not_echoed() -> None:
    raw = {"registry": "ghcr.io/a", "registryUsername": "u", "registryPassword": "hunter2"}
    with pytest.raises(ConfigError) as info:
        load_settings("prod", raw, secrets=set())
    assert "is plain text; set it with `pulumi config set --secret" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_raw_config_reads_the_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pulumi up` passes config as PULUMI_CONFIG JSON; unknown keys there are caught."""
    import pulumi

    pulumi.runtime.set_all_config({}, [])
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({
        "qaic-k8s:metricsPort": "0", "qaic-k8s:bogus": "1", "kubernetes:context": "x",
    }))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps(["qaic-k8s:registryPassword"]))
    assert raw_config() == {"metricsPort": "0", "bogus": "1"}
    assert secret_keys() == {"registryPassword"}
    with pytest.raises(ConfigError, match="'qaic-k8s:bogus' is not a known key"):
        load_settings("dev", raw_config(), secret_keys())
