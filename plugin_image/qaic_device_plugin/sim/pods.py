"""Kubelet's device manager for pods, on top of the kubelet simulator: Allocate once per
container, checkpoint the reply in kubelet's file, PreStartContainer before every start.

As kubelet does, a container restart never calls Allocate again: it reuses the checkpointed
reply (also after kubelet or plugin restarts) and only calls PreStartContainer, when the
plugin asked for it. The checkpoint outlives `KubeletSim.restart()`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..kubelet.api import deviceplugin_pb2 as pb
from ..kubelet.checkpoint import CHECKPOINT_FILE, CheckpointEntry, encode_checkpoint
from ..kubelet.convert import allocation_from_pb
from .kubelet import KubeletSim


@dataclass(frozen=True, slots=True)
class Container:
    pod_uid: str
    name: str


class Pods:
    def __init__(self, kubelet: KubeletSim) -> None:
        self.kubelet = kubelet
        self.path = kubelet.plugin_dir / CHECKPOINT_FILE
        self.entries: list[CheckpointEntry] = []
        self.pre_starts = 0  # PreStartContainer calls made

    async def admit(
        self, pod_uid: str, container: str, resource: str, ids: Sequence[str]
    ) -> pb.ContainerAllocateResponse:
        """Allocate, checkpoint the reply, then start the container (PreStart if asked)."""
        resp: pb.ContainerAllocateResponse = (
            await self.kubelet.allocate(resource, ids)
        ).container_responses[0]
        self.entries.append(
            CheckpointEntry(pod_uid, container, resource, frozenset(ids), allocation_from_pb(resp))
        )
        self.write()
        await self.start(pod_uid, container)
        return resp

    async def start(self, pod_uid: str, container: str) -> None:
        """Start (or restart) a container: PreStartContainer for each of its resources whose
        plugin asked for it, with the container's checkpointed device IDs. Raises the
        plugin's refusal (grpc.aio.AioRpcError): kubelet then does not start the container."""
        for e in self.entries:
            if (e.pod_uid, e.container_name) != (pod_uid, container):
                continue
            if self.kubelet.view(e.resource_name).options.pre_start_required:
                self.pre_starts += 1
                await self.kubelet.pre_start(e.resource_name, sorted(e.device_ids))

    def remove(self, pod_uid: str) -> None:
        """The pod was deleted: its entries leave the checkpoint."""
        self.entries = [e for e in self.entries if e.pod_uid != pod_uid]
        self.write()

    def write(self) -> None:
        registered = {name: sorted(v.health) for name, v in self.kubelet.resources.items()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(encode_checkpoint(self.entries, registered))
        os.replace(tmp, self.path)  # kubelet's checkpoint manager writes atomically too
