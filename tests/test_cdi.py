"""The CDI spec: content for the demo node, the CDI spec's rules, name mapping, writes.

No PyPI package ships the CDI JSON schema, so the rules are asserted here, written out from
the CDI specification (SPEC.md and schema/schema.json of cncf-tags/container-device-interface,
spec versions 0.6.0 to 1.1.0):

- required top-level fields `cdiVersion`, `kind`, `devices`; no others but `annotations` and
  `containerEdits` (schema: additionalProperties false);
- `cdiVersion` is Semantic Version 2.0;
- `kind` is `<prefix>/<name>`: the prefix a DNS subdomain of at most 253 characters, the name
  at most 63 characters, alphanumeric at both ends with `-`, `_`, `.` and alphanumerics between;
- `devices` has at least one entry; each has `name` and `containerEdits` (and may have
  `annotations`), the name alphanumeric at both ends with `-`, `_`, `.` between;
- `containerEdits.deviceNodes[]` needs `path`; its other fields are `hostPath`, `type`, `major`,
  `minor`, `fileMode`, `permissions` (one or more of r, w, m), `uid`, `gid`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qaic_device_plugin.qaic.cdi import (
    CDI_KIND,
    CdiSpecFile,
    cdi_device_name,
    cdi_name,
)
from qaic_device_plugin.qaic.cdi import spec as build_spec
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic.model import Soc
from qaic_device_plugin.sim.node import FakeNode

_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_KIND_NAME = re.compile(r"[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?")
_DEVICE_NAME = re.compile(r"[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?")
TOP_FIELDS = {"cdiVersion", "kind", "annotations", "devices", "containerEdits"}
DEVICE_FIELDS = {"name", "annotations", "containerEdits"}
EDIT_FIELDS = {"env", "deviceNodes", "mounts", "hooks", "additionalGids", "intelRdt"}
NODE_FIELDS = {
    "path",
    "hostPath",
    "type",
    "major",
    "minor",
    "fileMode",
    "permissions",
    "uid",
    "gid",
}


def valid_kind(kind: str) -> bool:
    prefix, sep, name = kind.partition("/")
    return (
        bool(sep)
        and 0 < len(prefix) <= 253
        and all(_DNS_LABEL.fullmatch(p) for p in prefix.split("."))
        and bool(_KIND_NAME.fullmatch(name))
    )


def assert_valid_cdi_spec(spec: dict[str, Any]) -> None:
    assert set(spec) <= TOP_FIELDS and {"cdiVersion", "kind", "devices"} <= set(spec)
    assert _SEMVER.fullmatch(spec["cdiVersion"])
    assert valid_kind(spec["kind"]), spec["kind"]
    devices = spec["devices"]
    assert isinstance(devices, list) and devices, "a spec needs at least one device"
    names = [d["name"] for d in devices]
    assert len(set(names)) == len(names)
    for d in devices:
        assert set(d) <= DEVICE_FIELDS and {"name", "containerEdits"} <= set(d)
        assert _DEVICE_NAME.fullmatch(d["name"]), d["name"]
        edits = d["containerEdits"]
        assert set(edits) <= EDIT_FIELDS
        for n in edits.get("deviceNodes", []):
            assert set(n) <= NODE_FIELDS and "path" in n
            assert n["path"].startswith("/")
            assert set(n.get("permissions", "r")) <= set("rwm") and n.get("permissions") != ""


def load(f: CdiSpecFile) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(f.path.read_text())
    return spec


# PCI addresses as discovery accepts them (domain of 4 to 8 hex digits, lower case).
pci_addresses = st.from_regex(r"\A[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")


def test_demo_node_spec(node: FakeNode, tmp_path: Path) -> None:
    f = CdiSpecFile(tmp_path / "cdi")
    state = Inventory(node.sysfs_root, node.dev_root, {}).scan(None)
    assert f.update(state)
    assert f.path == tmp_path / "cdi" / "qualcomm.com-qaic.json"
    spec = load(f)
    assert_valid_cdi_spec(spec)
    assert spec["kind"] == CDI_KIND == "qualcomm.com/qaic"
    # Names begin with a digit (the PCI domain): 0.5.0 is the lowest version that allows it
    # (core/cdi_version.py); 0.6.0, said before, kept containerd 1.7.0-1.7.11 from reading it.
    assert spec["cdiVersion"] == "0.5.0"
    assert len(spec["devices"]) == 10
    want = {
        cdi_name(s.pci_address): [{"path": f"/dev/accel/accel{s.accel_index}", "permissions": "rw"}]
        for s in node.socs
    }
    got = {d["name"]: d["containerEdits"]["deviceNodes"] for d in spec["devices"]}
    assert got == want
    assert [d["name"] for d in spec["devices"]] == sorted(want)
    # What Allocate returns resolves to a device of this spec.
    for s in node.socs:
        kind, _, name = cdi_device_name(s.pci_address).partition("=")
        assert kind == spec["kind"] and name in got
    assert oct(f.path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in f.path.parent.iterdir()] == [f.path.name]


def test_name_mapping_examples() -> None:
    assert cdi_name("0000:35:00.0") == "0000-35-00.0"
    assert cdi_device_name("0000:35:00.0") == "qualcomm.com/qaic=0000-35-00.0"
    for bad in ("0000:35:00", "0000-35-00.0", "0000:35:00.0\n", "0000:35:00.8", "0000:3G:00.0"):
        with pytest.raises(ValueError, match="not a PCI address"):
            cdi_name(bad)


@given(pci_addresses)
def test_names_are_valid_cdi_names(pci: str) -> None:
    name = cdi_name(pci)
    assert _DEVICE_NAME.fullmatch(name)
    kind, sep, tail = cdi_device_name(pci).partition("=")
    assert sep and kind == CDI_KIND and tail == name and valid_kind(kind)
    assert name.replace("-", ":") == pci  # reversible, hence injective


@given(pci_addresses, pci_addresses)
def test_names_are_injective(a: str, b: str) -> None:
    assert (cdi_name(a) == cdi_name(b)) == (a == b)


@given(st.lists(pci_addresses, min_size=1, max_size=20, unique=True))
def test_any_set_of_socs_makes_a_valid_spec(pcis: list[str]) -> None:
    socs = [Soc(p, i, 0xA100, None, p, i) for i, p in enumerate(pcis)]
    assert_valid_cdi_spec(build_spec(socs))


def test_rewritten_only_on_change(
    node: FakeNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = Inventory(node.sysfs_root, node.dev_root, {})
    f = CdiSpecFile(tmp_path / "cdi")
    assert f.update(inv.scan(None))
    first = f.path.stat()
    assert not f.update(inv.scan(None))
    pci = node.socs[0].pci_address
    node.remove_device_node(pci)  # unhealthy SoCs stay listed: no churn on health flips
    assert not f.update(inv.scan(None))
    assert not CdiSpecFile(tmp_path / "cdi").update(inv.scan(None))  # after a restart too
    assert f.path.stat().st_ino == first.st_ino

    node.remove_soc(pci)
    state = inv.scan(None)
    sources: list[str] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        sources.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert f.update(state)
    # Runtimes load *.json and *.yaml from the directory: the temporary file is neither.
    assert len(sources) == 1 and sources[0].startswith(".")
    assert not sources[0].endswith((".json", ".yaml"))
    assert f.path.stat().st_ino != first.st_ino
    spec = load(f)
    assert_valid_cdi_spec(spec)
    assert cdi_name(pci) not in {d["name"] for d in spec["devices"]}
    assert len(spec["devices"]) == 9


def test_no_socs_removes_the_spec(tmp_path: Path) -> None:
    empty = FakeNode(tmp_path / "empty", [])
    empty.write()
    state = Inventory(empty.sysfs_root, empty.dev_root, {}).scan(None)
    f = CdiSpecFile(tmp_path / "cdi")
    assert not f.update(state)
    f.path.parent.mkdir()
    f.path.write_text("{}")
    assert f.update(state)  # a spec with no devices would be invalid: no file at all
    assert not f.path.exists()


def test_write_failure_is_logged_not_raised(
    node: FakeNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    f = CdiSpecFile(blocker / "cdi")
    assert not f.update(Inventory(node.sysfs_root, node.dev_root, {}).scan(None))
    assert any(getattr(r, "event", None) == "cdi_write_failed" for r in caplog.records)


def test_default_directory() -> None:
    assert CdiSpecFile().path == Path("/var/run/cdi/qualcomm.com-qaic.json")
