"""The two gRPC services kubelet calls: Registration (plugin watcher) and the DRA v1 node service.

They only translate between protobuf and the plain types; preparing lives in node.NodeService.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from grpc import aio

from ..api.dra_v1 import api_pb2 as dra_pb
from ..api.dra_v1 import api_pb2_grpc as dra_grpc
from ..api.pluginregistration_v1 import api_pb2 as reg_pb
from ..api.pluginregistration_v1 import api_pb2_grpc as reg_grpc
from .node import NodeService
from .types import PLUGIN_TYPE, ClaimRef, PreparedDevice, base_request

log = logging.getLogger(__name__)


class RegistrationServicer(reg_grpc.RegistrationServicer):
    def __init__(self, driver_name: str, endpoint: str, services: Sequence[str]) -> None:
        """`services`: the gRPC services `endpoint` serves, which kubelet negotiates."""
        self._info = reg_pb.PluginInfo(
            type=PLUGIN_TYPE,
            name=driver_name,
            endpoint=endpoint,
            supported_versions=list(services),
        )
        self.registered = asyncio.Event()  # set on kubelet's positive NotifyRegistrationStatus
        # Called on every positive status, re-registrations too: a restarted kubelet wipes
        # the node's ResourceSlices, so the driver publishes them again at once.
        self.on_registered: list[Callable[[], None]] = []

    async def GetInfo(
        self, request: reg_pb.InfoRequest, context: aio.ServicerContext[Any, Any]
    ) -> reg_pb.PluginInfo:
        log.info("kubelet asked for plugin info", extra={"event": "dra_get_info"})
        return self._info

    async def NotifyRegistrationStatus(
        self, request: reg_pb.RegistrationStatus, context: aio.ServicerContext[Any, Any]
    ) -> reg_pb.RegistrationStatusResponse:
        if request.plugin_registered:
            log.info("registered with kubelet", extra={"event": "dra_registered"})
            self.registered.set()
            for listener in self.on_registered:
                listener()
        else:
            log.error(
                "kubelet refused the registration",
                extra={"event": "dra_registration_failed", "error": request.error},
            )
            self.registered.clear()
        return reg_pb.RegistrationStatusResponse()


def _refs(claims: Sequence[dra_pb.Claim]) -> list[ClaimRef]:
    return [ClaimRef(c.namespace, c.uid, c.name) for c in claims]


def _device(d: PreparedDevice) -> dra_pb.Device:
    """Request names go out as the parent request, as kubeletplugin's stripSubrequestNames
    does: kubelet matches them against a container's `claims[].request`, so `socs/ultra` (a
    `firstAvailable` choice) would give the container nothing."""
    out = dra_pb.Device(
        request_names=list(dict.fromkeys(base_request(r) for r in d.requests)),
        pool_name=d.pool,
        device_name=d.device,
        cdi_device_ids=list(d.cdi_ids),
    )
    if d.share_id is not None:
        out.share_id = d.share_id
    return out


class DraServicer(dra_grpc.DRAPluginServicer):
    def __init__(self, node: NodeService) -> None:
        self._node = node

    async def NodePrepareResources(
        self, request: dra_pb.NodePrepareResourcesRequest, context: aio.ServicerContext[Any, Any]
    ) -> dra_pb.NodePrepareResourcesResponse:
        results = await self._node.prepare(_refs(request.claims))
        resp = dra_pb.NodePrepareResourcesResponse()
        for uid, r in results.items():
            if isinstance(r, str):
                resp.claims[uid].error = r
            else:
                resp.claims[uid].devices.extend(_device(d) for d in r)
        return resp

    async def NodeUnprepareResources(
        self, request: dra_pb.NodeUnprepareResourcesRequest, context: aio.ServicerContext[Any, Any]
    ) -> dra_pb.NodeUnprepareResourcesResponse:
        results = await self._node.unprepare(_refs(request.claims))
        resp = dra_pb.NodeUnprepareResourcesResponse()
        for uid, err in results.items():
            resp.claims[uid].error = err or ""
        return resp
