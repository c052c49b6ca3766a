"""Publish one node-local pool of devices as ResourceSlices, like kubeletplugin's controller.

The pool is named after the node and split into slices of at most 128 devices (the v1 limit),
named `<node>-<driver>-<i>` and owned by the Node (garbage-collected with it). Any change
bumps the pool generation, so the scheduler never mixes old and new slices. Writes use
server-side apply; slices no longer needed are deleted. A device with taints whose taints the
server drops (API without device taints) is withdrawn instead: a bad device is never offered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from lightkube import ApiError, AsyncClient
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.models.resource_v1 import Device, ResourcePool, ResourceSliceSpec
from lightkube.resources.core_v1 import Node
from lightkube.resources.resource_v1 import ResourceSlice

log = logging.getLogger(__name__)

MAX_DEVICES_PER_SLICE = 128


class SlicePublisher:
    def __init__(self, client: AsyncClient, driver: str, node: str) -> None:
        self._client = client
        self.driver = driver
        self.node = node
        self._owner: list[OwnerReference] | None = None
        self._published: list[dict[str, Any]] | None = None
        self.generation = 0
        self.taints_dropped = False  # learnt from the server: it does not store device taints

    def slice_name(self, i: int) -> str:
        return f"{self.node}-{self.driver}-{i}"

    async def _owner_refs(self) -> list[OwnerReference]:
        if self._owner is None:
            try:
                node = await self._client.get(Node, self.node)
                uid = node.metadata.uid if node.metadata else None
                self._owner = (
                    [OwnerReference(apiVersion="v1", kind="Node", name=self.node, uid=uid or "")]
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

    async def _existing(self) -> dict[str, ResourceSlice]:
        fields: dict[str, Any] = {"spec.driver": self.driver, "spec.nodeName": self.node}
        out: dict[str, ResourceSlice] = {}
        async for s in self._client.list(ResourceSlice, fields=fields):
            if s.metadata and s.metadata.name:
                out[s.metadata.name] = s
                self.generation = max(self.generation, s.spec.pool.generation)
        return out

    async def publish(self, devices: Sequence[Device], *, force: bool = False) -> bool:
        """Make the server's slices equal `devices`; True when anything was written.

        Raises lightkube.ApiError or httpx2.HTTPError; the caller retries.
        """
        offered = [d for d in devices if not (self.taints_dropped and d.taints)]
        want = [d.to_dict() for d in sorted(offered, key=lambda d: d.name)]
        if want == self._published and not force:
            return False
        existing = await self._existing()
        self.generation += 1
        chunks = [
            want[i : i + MAX_DEVICES_PER_SLICE] for i in range(0, len(want), MAX_DEVICES_PER_SLICE)
        ]
        owner = await self._owner_refs()
        stored_taints = True
        for i, chunk in enumerate(chunks):
            body = ResourceSlice(
                metadata=ObjectMeta(name=self.slice_name(i), ownerReferences=owner or None),
                spec=ResourceSliceSpec(
                    driver=self.driver,
                    nodeName=self.node,
                    pool=ResourcePool(
                        name=self.node, generation=self.generation, resourceSliceCount=len(chunks)
                    ),
                    devices=[cast(Device, Device.from_dict(d)) for d in chunk],
                ),
            )
            got = await self._client.apply(body, field_manager=self.driver, force=True)
            sent = sum(1 for d in chunk if d.get("taints"))
            kept = sum(1 for d in (got.spec.devices or ()) if d.taints)
            stored_taints &= kept == sent
        for name in sorted(set(existing) - {self.slice_name(i) for i in range(len(chunks))}):
            await self._client.delete(ResourceSlice, name)
        self._published = want
        log.info(
            "ResourceSlices published",
            extra={
                "event": "dra_slices",
                "devices": len(want),
                "slices": len(chunks),
                "generation": self.generation,
            },
        )
        if not stored_taints and not self.taints_dropped:
            log.warning(
                "the API server dropped device taints; withdrawing tainted devices instead",
                extra={"event": "dra_taints_unsupported"},
            )
            self.taints_dropped = True
            return await self.publish(devices, force=True)
        return True

    async def withdraw(self) -> None:
        """Delete every slice of ours on this node (clean shutdown is NOT a reason: kubelet's
        prepared claims stay valid; this is for tests and for decommissioning)."""
        for name in sorted(await self._existing()):
            await self._client.delete(ResourceSlice, name)
        self._published = None
