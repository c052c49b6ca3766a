"""The ResourceSlice layout rules (kubelet/dra/slice_layout.py), without a server: names that
are valid object names for any node name, the split that stays valid with taints, and taint
ages kept across re-publishing. tests/test_dra_slices_apiserver.py has the real server."""

from __future__ import annotations

import re

import pytest

from qaic_device_plugin.kubelet.dra.slice_layout import (
    MAX_DEVICES_PER_SLICE,
    keep_taint_times,
    slice_name,
    split,
)

DRIVER = "qaic.qualcomm.com"
# k8s.io/apimachinery IsDNS1123Subdomain: at most 253 characters, dot-separated labels.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def valid_name(name: str) -> bool:
    return len(name) <= 253 and bool(_SUBDOMAIN.match(name))


def long_node(length: int, tail: str = "") -> str:
    """A valid node name of `length` characters: 62-character labels, `tail` at the end."""
    body = ".".join(["a" * 62] * 5)[:length]
    name = body[: length - 1 - len(tail)] + "a" + tail  # never ends in '.'
    assert valid_name(name) and len(name) == length, name
    return name


def test_short_node_names_keep_the_names_installs_already_have() -> None:
    assert slice_name("node-1", DRIVER, 0) == "node-1-qaic.qualcomm.com-0"
    longest_plain = "n" * (253 - len(f"-{DRIVER}-0"))
    assert slice_name(longest_plain, DRIVER, 0) == f"{longest_plain}-{DRIVER}-0"


@pytest.mark.parametrize("length", [236, 240, 245, 250, 252, 253])
def test_long_node_names_give_valid_names_unique_per_node_and_index(length: int) -> None:
    """The old `<node>-<driver>-<i>` is 273 characters for a 253-character node name: the
    server refused every write (422) and the node published nothing."""
    node = long_node(length)
    names = [slice_name(node, DRIVER, i) for i in (0, 1, 9, 10, 123)]
    assert all(valid_name(n) for n in names), names
    assert len(set(names)) == len(names)
    assert all(n.endswith(f"-{DRIVER}-{i}") for n, i in zip(names, (0, 1, 9, 10, 123), strict=True))
    other = long_node(length, tail="b")  # same long prefix, another node
    assert slice_name(other, DRIVER, 0) != names[0]


@pytest.mark.parametrize("cut", [".", "-"])
def test_a_cut_before_a_dot_or_hyphen_still_gives_a_valid_name(cut: str) -> None:
    """Truncating a node name can leave `...a.` before the suffix's '-': not a DNS label."""
    suffix_len = len(f"-{'0' * 16}-{DRIVER}-0")
    keep = 253 - suffix_len
    node = "a" * (keep - 1) + cut + "b" * (253 - keep)
    name = slice_name(node, DRIVER, 0)
    assert valid_name(name), name


def test_split_is_64_so_a_taint_never_makes_a_slice_invalid() -> None:
    """With any tainted device a v1 slice may hold only 64 devices
    (ResourceSliceMaxDevicesWithAdvancedFeatures). The old split at 128 made every write of a
    node with more than 64 SoCs fail as soon as one SoC was unhealthy."""
    devices = [{"name": f"soc-{i:03}"} for i in range(130)]
    groups = split(devices)
    assert MAX_DEVICES_PER_SLICE == 64
    assert [len(g) for g in groups] == [64, 64, 2]
    assert [d for g in groups for d in g] == devices
    assert split([]) == []


def test_taint_times_are_kept_for_the_same_taint_only() -> None:
    taint = {"key": "k", "value": "ue-count", "effect": "NoSchedule"}
    stored = {
        "a": {"name": "a", "taints": [{**taint, "timeAdded": "2026-01-01T00:00:00Z"}]},
        "b": {"name": "b", "taints": [{**taint, "timeAdded": "2026-01-01T00:00:00Z"}]},
    }
    want = [
        {"name": "a", "taints": [taint]},  # same taint: keeps its age
        {"name": "b", "taints": [{**taint, "value": "device-node"}]},  # another: a new age
        {"name": "c", "taints": [taint]},  # new device
        {"name": "d"},
    ]
    got = keep_taint_times(want, stored)
    assert got[0]["taints"][0]["timeAdded"] == "2026-01-01T00:00:00Z"
    assert "timeAdded" not in got[1]["taints"][0]
    assert got[2:] == want[2:]
    assert "timeAdded" not in want[0]["taints"][0]  # the input is not changed
