"""How a node-local pool is laid out in ResourceSlices: names, split, and what counts as equal.

Pure functions on plain dicts (the JSON form of resource.k8s.io/v1), so the rules the API
server enforces are checked here without a server:

- A slice name is a DNS subdomain of at most 253 characters. `<node>-<driver>-<i>` is kept
  while it fits (the names existing installs have); a longer one (node names may be 253
  characters themselves) becomes `<node prefix>-<hash of the node name>-<driver>-<i>`: the
  hash keeps two long node names with a common prefix apart, the index keeps slices apart.
- A slice holds at most 128 devices, but only 64 once any of them has taints or consumes
  counters (`ResourceSliceMaxDevicesWithAdvancedFeatures`, pkg/apis/resource/validation).
  Any device may get a taint at any moment (an unhealthy SoC), so the split is always 64:
  a taint then changes one slice in place instead of reshuffling every device into a new
  split, and no write is ever refused for its size.
- A taint's `timeAdded` is filled in by the server when it is missing; the publisher copies
  the stored one back, as upstream's controller does, so re-publishing neither resets a
  taint's age nor looks like a change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

MAX_DEVICES_PER_SLICE = 64  # ResourceSliceMaxDevicesWithAdvancedFeatures (taints, counters)
MAX_NAME = 253  # DNS subdomain
_HASH_CHARS = 16  # 64 bits of sha256: collisions between node names are not a concern

Json = dict[str, Any]


def slice_name(node: str, driver: str, index: int) -> str:
    """The name of slice `index` of `driver`'s pool on `node`; always a valid object name."""
    plain = f"{node}-{driver}-{index}"
    if len(plain) <= MAX_NAME:
        return plain
    digest = hashlib.sha256(node.encode()).hexdigest()[:_HASH_CHARS]
    suffix = f"-{digest}-{driver}-{index}"
    # A label may not end in '.' or '-' before the suffix's '-': trim what the cut left.
    prefix = node[: MAX_NAME - len(suffix)].rstrip(".-")
    return prefix + suffix


def split(devices: Sequence[Json]) -> list[list[Json]]:
    """Devices in slices of MAX_DEVICES_PER_SLICE, in the given order (none: no slice)."""
    n = MAX_DEVICES_PER_SLICE
    return [list(devices[i : i + n]) for i in range(0, len(devices), n)]


def _taint_key(t: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    return (t.get("key"), t.get("value"), t.get("effect"))


def keep_taint_times(devices: Sequence[Json], stored: Mapping[str, Json]) -> list[Json]:
    """`devices` with each taint's `timeAdded` taken from the stored device of the same name
    that has the same taint (key, value, effect); new taints are left for the server."""
    out = []
    for d in devices:
        old = stored.get(d["name"])
        if not d.get("taints") or old is None or not old.get("taints"):
            out.append(d)
            continue
        times = {_taint_key(t): t.get("timeAdded") for t in old["taints"]}
        taints = []
        for t in d["taints"]:
            added = t.get("timeAdded") or times.get(_taint_key(t))
            taints.append({**t, "timeAdded": added} if added else t)
        out.append({**d, "taints": taints})
    return out


def spec(
    driver: str, node: str, generation: int, count: int, devices: Sequence[Json]
) -> Json:
    """The spec of one slice of the node-local pool named after the node."""
    return {
        "driver": driver,
        "nodeName": node,
        "pool": {"name": node, "generation": generation, "resourceSliceCount": count},
        "devices": list(devices),
    }
