"""Shared counters (partitionable devices, KEP-4815) in a node-local pool's ResourceSlices.

Pure functions on the JSON form of resource.k8s.io/v1, with the rules the 1.37 API server
enforces (pkg/apis/resource/validation, types.go):

- a slice holds devices *or* counter sets, never both ("only one of `sharedCounters` or
  `devices` is allowed"): the counter sets go in slices of their own, after the device slices;
- at most 8 counter sets per slice (ResourceSliceMaxCounterSets), 32 counters per set; a
  counter set's name is unique in the pool, across its slices (the allocator gathers them
  from every slice of the pool, pools_incubating.go getAndValidateCounterSets);
- a slice whose devices consume counters holds at most 64 devices; `split_devices` keeps the
  devices of one counter set together in one slice.

An API server without DRAPartitionableDevices drops `sharedCounters` and `consumesCounters`
on write, and the scheduler would then hand out a card and its SoCs together.
`counters_dropped` notices it on what the server stored; the publisher then offers only
`non_overlapping` devices, which stay apart without counters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MAX_COUNTER_SETS_PER_SLICE = 8  # ResourceSliceMaxCounterSets

Json = dict[str, Any]


def split(counter_sets: Sequence[Json]) -> list[list[Json]]:
    """Counter sets in slices of MAX_COUNTER_SETS_PER_SLICE, in name order (none: no slice)."""
    ordered = sorted(counter_sets, key=lambda c: str(c["name"]))
    n = MAX_COUNTER_SETS_PER_SLICE
    return [ordered[i : i + n] for i in range(0, len(ordered), n)]


def spec(driver: str, node: str, generation: int, count: int, counter_sets: Sequence[Json],
         ) -> Json:
    """The spec of one counter slice of the node-local pool named after the node."""
    return {
        "driver": driver,
        "nodeName": node,
        "pool": {"name": node, "generation": generation, "resourceSliceCount": count},
        "sharedCounters": list(counter_sets),
    }


def split_devices(devices: Sequence[Json], per_slice: int) -> list[list[Json]]:
    """Devices in slices of at most `per_slice`, those consuming the same counter set kept in
    one slice (a card's SoCs, parts and whole, 15 devices): a change to one card (a taint on a
    SoC, which its parts and card carry too) then rewrites one slice, not two, and keeps the
    pool generation. Devices consuming no counters come first, each group in name order.

    Within a slice the devices that consume fewer counters come first (a card's SoCs, then
    its parts, then the whole card): kube-scheduler's allocator tries a node's devices in
    slice order and evaluates the class's CEL on each, so a one-SoC request, the common one,
    no longer walks past every card and part first. Measured with the scale bench (300 nodes,
    load 0.85): 60-65 ms of scheduler CPU per DRA pod against 156-172 ms with each card's
    devices in name order. Which SoC a request gets does not change: the SoCs keep their
    name order, and no class selects SoCs and cards alike."""
    groups: dict[str, list[Json]] = {}
    for d in devices:
        sets = sorted(str(c["counterSet"]) for c in d.get("consumesCounters") or ())
        groups.setdefault(sets[0] if sets else "", []).append(d)
    out: list[list[Json]] = []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda d: str(d["name"]))
        chunks = [group] if key else [[d] for d in group]  # a group that never splits
        for chunk in chunks:
            while len(chunk) > per_slice:  # larger than a slice: no choice but to split it
                out.append(chunk[:per_slice])
                chunk = chunk[per_slice:]
            if not out or len(out[-1]) + len(chunk) > per_slice:
                out.append([])
            out[-1].extend(chunk)
    return [sorted(chunk, key=lambda d: (len(_consumed(d)), str(d["name"]))) for chunk in out]


def _consumed(device: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(str(c["counterSet"]), str(name))
            for c in device.get("consumesCounters") or () for name in c.get("counters") or {}}


def counters_dropped(sent: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether the server kept less of the counters than a slice's spec asked for."""
    if sent.get("sharedCounters") and not stored.get("sharedCounters"):
        return True
    kept = {d.get("name"): d for d in stored.get("devices") or ()}
    return any(_consumed(d) and not _consumed(kept.get(d["name"]) or {})
               for d in sent.get("devices") or ())


def non_overlapping(devices: Sequence[Json]) -> list[Json]:
    """The devices that can be offered without counters: a device is kept unless a counter it
    consumes is consumed by a device kept already, taking devices that consume fewer counters
    first (a SoC before the card that holds it). Devices consuming nothing are all kept; the
    result keeps the input order and carries no counter consumption."""
    taken: set[tuple[str, str]] = set()
    keep: set[int] = set()
    for i in sorted(range(len(devices)), key=lambda i: len(_consumed(devices[i]))):
        used = _consumed(devices[i])
        if used & taken:
            continue
        taken |= used
        keep.add(i)
    return [{k: v for k, v in d.items() if k != "consumesCounters"}
            for i, d in enumerate(devices) if i in keep]
