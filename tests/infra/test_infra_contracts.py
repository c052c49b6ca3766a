"""Stack validation and plugin validation agree (issue 13 item 9): both come from
qaic_device_plugin.config.contracts, and an override the stack passes is one the plugin loads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from infra_harness import manifest, run_components

from infra.components.device_plugin import DevicePlugin, DevicePluginArgs
from infra.config import ConfigError, load_settings
from qaic_device_plugin.config.contracts import SKU_NAMES
from qaic_device_plugin.config.load import load
from qaic_device_plugin.config.settings import SettingsError

OVERRIDES = [
    "0000:35:00.0=ultra",
    "10000:01:00.0=pro",  # a 5-digit PCI domain (VMD); the stack used to refuse it
    "0000:3A:00.0=Std",  # the plugin lowercases addresses and SKUs
    "0000:35:00.0=lite",  # a SKU the stack used to refuse
    "0000:35:00.0=ultra-plus",
    "35:00.0=ultra",  # no domain
    "0000:35:00.8=ultra",  # function > 7
    "0000:35:00.0=huge",  # no such SKU
    "0000:35:00.0",  # no SKU at all
]


def stack_accepts(entry: str) -> bool:
    try:
        load_settings("unit", {"skuBasedResources": "true", "skuOverrides": json.dumps([entry])})
    except ConfigError:
        return False
    return True


def plugin_accepts(entry: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    address, eq, sku = entry.partition("=")
    if not eq:
        return False  # no JSON object entry can be formed; the plugin has nothing to read
    monkeypatch.setenv("QAIC_SKU_OVERRIDES", json.dumps({address: sku}))
    try:
        load([])
    except SettingsError:
        return False
    return True


@pytest.mark.parametrize("entry", OVERRIDES)
def test_stack_accepts_an_override_exactly_when_the_plugin_does(
    entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stack_accepts(entry) is plugin_accepts(entry, monkeypatch)


def test_the_env_the_stack_writes_is_what_the_plugin_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = load_settings("unit", {"skuBasedResources": "true",
                               "skuOverrides": json.dumps(["10000:01:00.0=Pro"])})
    mocks, _ = run_components(lambda: {"d": DevicePlugin(
        "dp", DevicePluginArgs(settings=s, image_ref="r:1")).daemonset_name})
    pod: dict[str, Any] = manifest(mocks.one("kubernetes:apps/v1:DaemonSet"))["spec"][
        "template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"] if "value" in e}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("QAIC_DEVICE_PLUGIN_DIR", "/tmp")  # the plugin checks only its length
    loaded = load([])
    assert {k: v.value for k, v in loaded.sku_overrides.items()} == {"10000:01:00.0": "pro"}


def test_every_plugin_sku_is_a_valid_sample_sku() -> None:
    for sku in SKU_NAMES:
        assert load_settings("unit", {"workloadSku": sku}).workload_sku == sku
