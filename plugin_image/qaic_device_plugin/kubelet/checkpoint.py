"""What kubelet will hand a container: its device-manager checkpoint, read-only.

Kubelet checkpoints every Allocate reply (`kubelet_internal_checkpoint` in the plugin dir)
and reuses it when a container restarts, also across kubelet and plugin restarts, without
asking the plugin again. A plugin that wants to check those replies against the present
(PreStartContainer) must read them from there: its own memory dies with it.

Layout (k8s.io/kubernetes pkg/kubelet/cm/devicemanager/checkpoint, Go's encoding/json):
`{"Data": {"PodDeviceEntries": [{"PodUID", "ContainerName", "ResourceName",
"DeviceIDs": {"<numa>": [ids]}, "AllocResp": base64(ContainerAllocateResponse)}],
"RegisteredDevices": {resource: [ids]}}, "Checksum": n}`; kubelets before 1.20 wrote
`DeviceIDs` as a plain list. The checksum is Go's object hash, which we cannot recompute;
kubelet verifies it, we only read.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from .api import deviceplugin_pb2 as pb
from .convert import allocation_from_pb, allocation_to_pb
from .types import ContainerAllocation

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "kubelet_internal_checkpoint"
MEMORY_LIMIT = 4096  # Allocate replies kept in memory as the fallback


class CheckpointUnreadable(Exception):
    """The checkpoint file is missing or not in kubelet's layout."""


@dataclass(frozen=True, slots=True)
class CheckpointEntry:
    pod_uid: str
    container_name: str
    resource_name: str
    device_ids: frozenset[str]
    allocation: ContainerAllocation


def _device_ids(raw: Any) -> frozenset[str]:
    if isinstance(raw, Mapping):  # per NUMA node (kubelet >= 1.20)
        groups: Iterable[Any] = raw.values()
    elif isinstance(raw, list):  # older kubelets: one list
        groups = [raw]
    else:
        raise ValueError(f"DeviceIDs is {type(raw).__name__}")
    ids: set[str] = set()
    for group in groups:
        if not isinstance(group, list) or not all(isinstance(i, str) for i in group):
            raise ValueError("DeviceIDs holds something other than lists of strings")
        ids.update(group)
    return frozenset(ids)


def _entry(raw: Any) -> CheckpointEntry:
    if not isinstance(raw, Mapping):
        raise ValueError("entry is not an object")
    blob = raw.get("AllocResp") or ""
    if not isinstance(blob, str):
        raise ValueError("AllocResp is not a base64 string")
    resp = pb.ContainerAllocateResponse.FromString(base64.b64decode(blob, validate=True))
    return CheckpointEntry(
        pod_uid=str(raw.get("PodUID", "")),
        container_name=str(raw.get("ContainerName", "")),
        resource_name=str(raw.get("ResourceName", "")),
        device_ids=_device_ids(raw.get("DeviceIDs") or {}),
        allocation=allocation_from_pb(resp),
    )


def parse_checkpoint(blob: bytes | str) -> list[CheckpointEntry]:
    """Every entry that parses; a malformed entry is skipped and logged, a malformed file
    raises CheckpointUnreadable."""
    try:
        doc = json.loads(blob)
        entries = doc["Data"]["PodDeviceEntries"] or []
        if not isinstance(entries, list):
            raise TypeError("PodDeviceEntries is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointUnreadable(f"not kubelet's checkpoint layout: {e!r}") from None
    out: list[CheckpointEntry] = []
    for i, raw in enumerate(entries):
        try:
            out.append(_entry(raw))
        except (ValueError, TypeError, binascii.Error, DecodeError) as e:
            log.warning(
                "kubelet checkpoint entry skipped",
                extra={"event": "checkpoint_entry_skipped", "index": i, "error": str(e)},
            )
    return out


def read_checkpoint(path: Path) -> list[CheckpointEntry]:
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointUnreadable(f"{path}: {e.strerror or e}") from None
    return parse_checkpoint(blob)


def encode_checkpoint(
    entries: Sequence[CheckpointEntry], registered: Mapping[str, Sequence[str]]
) -> bytes:
    """Kubelet's layout, for simulators (all devices under NUMA node 0; checksum 0)."""
    data = {
        "PodDeviceEntries": [
            {
                "PodUID": e.pod_uid,
                "ContainerName": e.container_name,
                "ResourceName": e.resource_name,
                "DeviceIDs": {"0": sorted(e.device_ids)},
                "AllocResp": base64.b64encode(
                    allocation_to_pb(e.allocation).SerializeToString()
                ).decode(),
            }
            for e in entries
        ],
        "RegisteredDevices": {r: list(ids) for r, ids in registered.items()},
    }
    return json.dumps({"Data": data, "Checksum": 0}).encode()


@dataclass(frozen=True, slots=True)
class Issued:
    """The replies kubelet holds for one set of devices, and where we learned them."""

    allocations: tuple[ContainerAllocation, ...]
    source: str  # "checkpoint" | "memory" | "none"


class IssuedAllocations:
    """Which Allocate replies kubelet will use for a container holding a set of devices:
    kubelet's checkpoint, else (unreadable or no entry) what this process returned."""

    def __init__(self, checkpoint: Path, *, limit: int = MEMORY_LIMIT) -> None:
        self.checkpoint = checkpoint
        self._limit = limit
        self._memory: OrderedDict[tuple[str, frozenset[str]], ContainerAllocation] = OrderedDict()
        self._warned = False

    def record(self, resource: str, device_ids: Sequence[str], alloc: ContainerAllocation) -> None:
        key = (resource, frozenset(device_ids))
        self._memory[key] = alloc
        self._memory.move_to_end(key)
        while len(self._memory) > self._limit:
            self._memory.popitem(last=False)

    def lookup(self, resource: str, device_ids: Sequence[str]) -> Issued:
        ids = frozenset(device_ids)
        try:
            entries = read_checkpoint(self.checkpoint)
        except CheckpointUnreadable as e:
            log.log(
                logging.DEBUG if self._warned else logging.WARNING,
                "kubelet checkpoint unreadable; checking against what this process returned",
                extra={"event": "checkpoint_unreadable", "error": str(e)},
            )
            self._warned = True
        else:
            found = tuple(
                e.allocation for e in entries if e.resource_name == resource and e.device_ids == ids
            )
            if found:
                return Issued(found, "checkpoint")
            log.info(
                "no kubelet checkpoint entry for these devices; checking against what this "
                "process returned",
                extra={
                    "event": "checkpoint_no_entry",
                    "resource": resource,
                    "devices": sorted(ids),
                },
            )
        mine = self._memory.get((resource, ids))
        return Issued((mine,), "memory") if mine is not None else Issued((), "none")
