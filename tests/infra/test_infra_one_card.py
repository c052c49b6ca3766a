"""DRA mode's extended resources and whole cards under Pulumi mocks: which DeviceClass stands
for which extended resource in each SKU mode, which devices each class selects (CEL with
cel-python on the devices the driver publishes, dra/cards.py), when the one-card admission
rule is deployed and how it is bound, its stack keys, and strict schema validation. Its
behaviour at a real API server: tests/e2e/test_one_card_apiserver.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from infra_harness import kubernetes_objects
from test_infra_dra import objects, run_dra, selects

from infra.components import one_card
from infra.components.dra_classes import device_classes, extended_resource_names
from infra.config import ConfigError, load_settings
from qaic_device_plugin.config.contracts import SKU_NAMES
from qaic_device_plugin.dra import cards
from qaic_device_plugin.dra.backend import DRIVER_NAME, to_device
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.qaic.qaic_util import parse_qaic_util
from qaic_device_plugin.sim.node import CardSpec, FakeNode

SKU_MODE = {"skuBasedResources": "true"}


def extended(run_changes: dict[str, str]) -> dict[str, str | None]:
    classes = objects(run_dra(**run_changes), "DeviceClass")
    return {n: o["spec"].get("extendedResourceName") for n, o in classes.items()}


def test_sku_mode_picks_which_extended_resources_the_classes_stand_for() -> None:
    """As in device-plugin mode: SKU mode off serves qualcomm.com/qaic, on serves
    qualcomm.com/qaic-<sku>; the card classes' names exist in both and in neither plugin mode."""
    off, on = extended({}), extended(SKU_MODE)
    cards_ = {f"ultra-card.{DRIVER_NAME}": "qualcomm.com/qaic-ultra-card",
              f"ultra-3soc.{DRIVER_NAME}": "qualcomm.com/qaic-ultra-3soc",
              f"ultra-2soc.{DRIVER_NAME}": "qualcomm.com/qaic-ultra-2soc"}
    assert off == {DRIVER_NAME: "qualcomm.com/qaic",
                   **{f"{sku}.{DRIVER_NAME}": None for sku in SKU_NAMES}, **cards_}
    assert on == {DRIVER_NAME: None,
                  **{f"{sku}.{DRIVER_NAME}": f"qualcomm.com/qaic-{sku}" for sku in SKU_NAMES},
                  **cards_}
    for mode in (False, True):  # "should be unique among all the device classes"
        names = extended_resource_names(mode)
        assert len(names) == len(set(names))


def cel_view(device: Any) -> dict[str, Any]:
    """A published device as CEL sees it: attributes grouped by domain."""
    attrs: dict[str, dict[str, Any]] = {}
    for name, value in device.to_dict()["attributes"].items():
        domain, _, short = name.rpartition("/")
        attrs.setdefault(domain or DRIVER_NAME, {})[short] = next(iter(value.values()))
    return {"driver": DRIVER_NAME, "attributes": attrs}


def test_class_selectors_tell_socs_cards_and_parts_apart(tmp_path: Path) -> None:
    node = FakeNode(tmp_path / "node", [CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD)])
    node.write()
    util = subprocess.run([str(node.qaic_util_path), "-q"], capture_output=True, text=True,
                          check=True).stdout
    states = Inventory(node.sysfs_root, node.dev_root, {}).scan(parse_qaic_util(util)).socs
    published = cards.partition([(s, to_device(s)) for s in states]).devices
    devices = [cel_view(d) for d in published]
    kinds = [(d["attributes"][DRIVER_NAME]["type"],
              d["attributes"][DRIVER_NAME].get("socCount", 1)) for d in devices]
    specs = dict(device_classes(sku_mode=True))

    def picked(cls: str) -> list[tuple[str, int]]:
        return sorted(k for k, d in zip(kinds, devices, strict=True) if selects(specs[cls], d))

    assert picked(DRIVER_NAME) == [("soc", 1)] * 5
    assert picked(f"ultra.{DRIVER_NAME}") == [("soc", 1)] * 4
    assert picked(f"ultra-card.{DRIVER_NAME}") == [("card", 4)]
    assert picked(f"ultra-3soc.{DRIVER_NAME}") == [("part", 3)] * 4
    assert picked(f"ultra-2soc.{DRIVER_NAME}") == [("part", 2)] * 6
    assert picked(f"std.{DRIVER_NAME}") == [("soc", 1)]
    # A SoC published by a driver from before whole cards (no `type`) is still a SoC, and
    # no class evaluates to an error on it (an error would abort the allocation).
    old = cel_view(to_device(states[0]))
    assert "type" not in old["attributes"][DRIVER_NAME]
    assert selects(specs[f"ultra.{DRIVER_NAME}"], old)
    assert not selects(specs[f"ultra-card.{DRIVER_NAME}"], old)
    assert not selects(specs[f"ultra-2soc.{DRIVER_NAME}"], old)


def admission(run_changes: dict[str, str]) -> dict[str, set[str]]:
    objs = kubernetes_objects(run_dra(**run_changes).mocks)
    kinds = ("MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
             "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    return {k: {o["metadata"]["name"] for o in objs if o["kind"] == k} for k in kinds}


def test_the_one_card_rule_comes_with_dra_and_sku_mode_only() -> None:
    rule = {one_card.MUTATING_NAME, one_card.VALIDATING_NAME}
    on = admission(SKU_MODE)
    assert on["MutatingAdmissionPolicy"] == on["MutatingAdmissionPolicyBinding"] == {
        one_card.MUTATING_NAME}
    assert rule - {one_card.MUTATING_NAME} <= on["ValidatingAdmissionPolicy"]
    assert rule - {one_card.MUTATING_NAME} <= on["ValidatingAdmissionPolicyBinding"]
    for changes in ({}, {**SKU_MODE, "ultraOneCard": "false"}):
        off = admission(changes)
        assert not off["MutatingAdmissionPolicy"] and not off["MutatingAdmissionPolicyBinding"]
        assert one_card.VALIDATING_NAME not in off["ValidatingAdmissionPolicy"]


def test_bindings_follow_ultra_one_card_namespaces() -> None:
    objs = kubernetes_objects(run_dra(**SKU_MODE, ultraOneCardNamespaces=[
        "qaic.example.com/nodes=dra"]).mocks)
    bindings = [o for o in objs if o["kind"].endswith("AdmissionPolicyBinding")
                and o["metadata"]["name"].startswith("qaic-ultra-one-card")]
    assert len(bindings) == 2
    for b in bindings:
        match = b["spec"]["matchResources"]
        assert match["namespaceSelector"] == {"matchLabels": {"qaic.example.com/nodes": "dra"}}
        assert match["objectSelector"]["matchExpressions"] == [
            {"key": one_card.OPT_OUT_LABEL, "operator": "NotIn", "values": ["false"]}]


@pytest.mark.parametrize(("raw", "line"), [
    ({"allocationApi": "dra", "skuBasedResources": "true",
      "ultraOneCardNamespaces": '["no equals sign"]'},
     "stack 'unit': 'qaic-k8s:ultraOneCardNamespaces' is '[\"no equals sign\"]', but it must "
     "be a JSON array of \"<label>=<value>\" strings (namespace labels)."),
    ({"allocationApi": "dra", "skuBasedResources": "true", "ultraOneCard": "false",
      "ultraOneCardNamespaces": '["a=b"]'},
     "stack 'unit': 'qaic-k8s:ultraOneCardNamespaces' is '[\"a=b\"]', which has no effect "
     "unless"),
])
def test_bad_one_card_settings_are_one_line(raw: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings("unit", raw)
    assert str(info.value).startswith(line), str(info.value)
    assert "\n" not in str(info.value)


def test_one_card_objects_are_strictly_valid() -> None:
    version = kubernetes_validate.utils.latest_version()
    objs = [o for o in kubernetes_objects(run_dra(**SKU_MODE).mocks)
            if o["kind"] in ("MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
                             "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                             "DeviceClass")]
    assert len(objs) >= 4 + 13
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)
