"""Publish one node-local pool of devices as ResourceSlices, like kubeletplugin's controller.

The pool is named after the node and laid out by slice_layout (64 devices a slice, names that
always fit). Each sync compares the wanted slices with the server's (a fresh list), and writes
only what differs: nothing when nothing changed, so a periodic resync costs one list, not a
write per slice. The pool generation moves only when the slices change; as upstream's
controller does, it is kept when one existing slice is updated in place (the scheduler sees
that change atomically) and bumped when slices are created, deleted or several change.
Slices are owned by the Node (garbage-collected with it) and written with server-side apply.

`watch` follows our slices on the server and asks for a sync whenever someone else deleted or
changed one: kubelet deletes every slice of its node when it starts, possibly after the driver
has registered again. Until the next sync has put them back, `problem` says why the server's
slices are not the wanted ones (readiness reports it).

A device with taints whose taints the server drops (API without device taints) is withdrawn
instead: a bad device is never offered. Counter sets (partitionable devices) go in slices of
their own after the device slices (kubelet/dra/counters.py); a server that drops them gets
only devices that do not overlap, so two devices sharing hardware are never both offered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.models.resource_v1 import Device
from lightkube.resources.core_v1 import Node
from lightkube.resources.resource_v1 import ResourceSlice

from . import counters
from . import slice_layout as layout

log = logging.getLogger(__name__)

WATCH_RETRY_SECONDS = (0.2, 10.0)
WATCH_SERVER_TIMEOUT = 300  # the server ends each watch; a silently dead connection can't hang

Json = dict[str, Any]


@dataclass
class SyncResult:
    applied: int = 0
    deleted: int = 0


@dataclass
class _Written:
    """Our last write of a slice: what we sent, what the server stored, at which version.
    A stored spec equal to `got` for a wanted spec equal to `sent` is in place even if the
    server normalised something we don't know about (no write loop on such a field)."""

    sent: Json
    got: Json
    version: str | None


class SlicePublisher:
    def __init__(self, client: AsyncClient, driver: str, node: str) -> None:
        self._client = client
        self.driver = driver
        self.node = node
        self._owner: list[Json] | None = None
        self._written: dict[str, _Written] = {}
        self._wanted: set[str] = set()  # names of the slices the last sync wanted
        self._deletions = 0  # deletions of wanted slices the watch has seen
        self.generation = 0
        self.taints_dropped = False  # learnt from the server: it does not store device taints
        self.counters_dropped = False  # learnt from the server: no partitionable devices
        self.problem: str | None = "not published yet"

    def slice_name(self, i: int) -> str:
        return layout.slice_name(self.node, self.driver, i)

    @property
    def _fields(self) -> dict[str, Any]:
        return {"spec.driver": self.driver, "spec.nodeName": self.node}

    async def _owner_refs(self) -> list[Json]:
        if self._owner is None:
            try:
                node = await self._client.get(Node, self.node)
                uid = node.metadata.uid if node.metadata else None
                self._owner = (
                    [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": uid}]
                    if uid
                    else []
                )
            except ApiError as e:
                log.warning(
                    "Node not readable; slices get no owner",
                    extra={"event": "dra_node_unknown", "node": self.node, "error": str(e)},
                )
                self._owner = []
        return self._owner

    async def _stored(self) -> dict[str, Json]:
        out: dict[str, Json] = {}
        async for s in self._client.list(ResourceSlice, fields=self._fields):
            if s.metadata and s.metadata.name:
                out[s.metadata.name] = s.to_dict()
        return out

    def _in_place(self, name: str, want: Json, stored: Json | None) -> bool:
        if stored is None:
            return False
        have = stored.get("spec", {})
        if have == want:
            return True
        w = self._written.get(name)
        return w is not None and w.sent == want and w.got == have

    async def sync(self, devices: Sequence[Device], counter_sets: Sequence[Json] = (),
                   ) -> SyncResult:
        """Make the server's slices equal `devices` (and the `counter_sets` they consume, in
        slices of their own: kubelet/dra/counters.py); says what was written.

        Raises lightkube.ApiError or httpx2.HTTPError (problem then says why); the caller
        retries."""
        deletions = self._deletions
        try:
            result = await self._sync(devices, counter_sets)
        except (ApiError, httpx2.HTTPError) as e:
            self.problem = f"publishing failed: {e}"
            raise
        if self._deletions == deletions:  # no deletion seen since the list: all in place
            self.problem = None
        return result

    async def _sync(self, devices: Sequence[Device], counter_sets: Sequence[Json] = (),
                    ) -> SyncResult:
        offered = [d for d in devices if not (self.taints_dropped and d.taints)]
        want = [d.to_dict() for d in sorted(offered, key=lambda d: d.name)]
        sets = counters.split(counter_sets)
        if self.counters_dropped:
            want, sets = counters.non_overlapping(want), []
        groups = counters.split_devices(want, layout.MAX_DEVICES_PER_SLICE)
        names = [self.slice_name(i) for i in range(len(groups) + len(sets))]
        self._wanted = set(names)
        stored = await self._stored()
        gen = max([self.generation, *(s["spec"]["pool"]["generation"] for s in stored.values())])
        old_devices = {
            d["name"]: d for s in stored.values() for d in s["spec"].get("devices") or ()
        }
        groups = [layout.keep_taint_times(g, old_devices) for g in groups]

        def specs(generation: int) -> list[Json]:
            total = len(names)
            return [
                layout.spec(self.driver, self.node, generation, total, g) for g in groups
            ] + [counters.spec(self.driver, self.node, generation, total, c) for c in sets]

        wanted = specs(gen)
        changed = [
            i for i, n in enumerate(names) if not self._in_place(n, wanted[i], stored.get(n))
        ]
        leftovers = sorted(set(stored) - set(names))
        result = SyncResult()
        if not changed and not leftovers:
            self.generation = gen
            return result
        if gen == 0 or leftovers or len(changed) > 1 or any(n not in stored for n in names):
            gen += 1  # more than one write, or a create: a new generation the scheduler waits on
            wanted, changed = specs(gen), list(range(len(names)))
        self.generation = gen
        owner = await self._owner_refs()
        stored_taints, stored_counters = True, True
        for i in changed:
            got = await self._apply(names[i], wanted[i], owner)
            result.applied += 1
            sent = sum(1 for d in wanted[i].get("devices") or () if d.get("taints"))
            kept = sum(1 for d in got.get("devices") or () if d.get("taints"))
            stored_taints &= kept == sent
            stored_counters &= not counters.counters_dropped(wanted[i], got)
        for name in leftovers:
            try:
                await self._client.delete(ResourceSlice, name)
            except ApiError as e:
                if e.status.code != 404:  # gone already (kubelet's wipe, say): that is done
                    raise
            self._written.pop(name, None)
            result.deleted += 1
        log.info(
            "ResourceSlices published",
            extra={
                "event": "dra_slices",
                "devices": len(want),
                "slices": len(names),
                "applied": result.applied,
                "deleted": result.deleted,
                "generation": gen,
            },
        )
        if not stored_counters and not self.counters_dropped:
            log.warning(
                "the API server dropped shared counters (DRAPartitionableDevices off); "
                "offering only devices that do not overlap (no whole cards)",
                extra={"event": "dra_counters_unsupported"},
            )
            self.counters_dropped = True
            again = await self._sync(devices, counter_sets)
            return SyncResult(result.applied + again.applied, result.deleted + again.deleted)
        if not stored_taints and not self.taints_dropped:
            log.warning(
                "the API server dropped device taints; withdrawing tainted devices instead",
                extra={"event": "dra_taints_unsupported"},
            )
            self.taints_dropped = True
            again = await self._sync(devices, counter_sets)
            return SyncResult(result.applied + again.applied, result.deleted + again.deleted)
        return result

    async def _apply(self, name: str, spec: Json, owner: list[Json]) -> Json:
        metadata: Json = {"name": name}
        if owner:
            metadata["ownerReferences"] = owner
        body = cast(ResourceSlice, ResourceSlice.from_dict(
            {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
             "metadata": metadata, "spec": spec}
        ))
        got = await self._client.apply(body, field_manager=self.driver, force=True)
        stored = cast(Json, got.to_dict().get("spec", {}))
        version = got.metadata.resourceVersion if got.metadata else None
        self._written[name] = _Written(spec, stored, version)
        return stored

    def _echo(self, name: str, version: str | None) -> bool:
        w = self._written.get(name)
        return w is not None and version is not None and w.version == version

    async def watch(self, wake: Callable[[], None]) -> None:
        """Follow our slices on the server until cancelled; `wake()` asks for a sync whenever
        the server's copy may now differ from ours (not for the echo of our own writes).
        A deleted slice we want also sets `problem` until a sync has put it back. Each
        (re)connect replays the current slices, so nothing missed while away stays missed."""
        delay = WATCH_RETRY_SECONDS[0]
        while True:
            try:
                events = self._client.watch(
                    ResourceSlice, fields=self._fields, server_timeout=WATCH_SERVER_TIMEOUT
                )
                async for op, s in events:
                    delay = WATCH_RETRY_SECONDS[0]
                    name = (s.metadata and s.metadata.name) or ""
                    version = s.metadata.resourceVersion if s.metadata else None
                    if op == "DELETED" and name in self._wanted:
                        self._deletions += 1
                        self.problem = f"ResourceSlice {name} was deleted; publishing it again"
                        log.warning(
                            "our ResourceSlice was deleted by someone else; publishing again",
                            extra={"event": "dra_slice_deleted", "slice": name},
                        )
                    elif op != "DELETED" and self._echo(name, version):
                        continue
                    wake()
            except (ApiError, httpx2.HTTPError) as e:
                log.warning(
                    "watching ResourceSlices failed; retrying",
                    extra={"event": "dra_slice_watch_failed", "error": str(e), "retry_in": delay},
                )
                wake()  # whatever happened meanwhile: the next sync lists it
                await asyncio.sleep(delay)
                delay = min(delay * 2, WATCH_RETRY_SECONDS[1])

    async def withdraw(self) -> None:
        """Delete every slice of ours on this node (clean shutdown is NOT a reason: kubelet's
        prepared claims stay valid; this is for tests and for decommissioning)."""
        self._wanted = set()
        for name in sorted(await self._stored()):
            await self._client.delete(ResourceSlice, name)
        self._written.clear()
