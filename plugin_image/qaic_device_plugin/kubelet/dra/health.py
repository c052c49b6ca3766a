"""The DRA health service (dra-health v1): a stream of every device's health to kubelet.

kubelet keeps the last report of each device for `health_check_timeout_seconds` and reads a
device as Unknown once that has passed, so the stream repeats the full report on a heartbeat
as well as on every change; the timeout it announces is a few heartbeats, so one late
heartbeat never turns a device Unknown.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from grpc import aio

from ..api.dra_health_v1 import api_pb2 as health_pb
from ..api.dra_health_v1 import api_pb2_grpc as health_grpc
from ..feed import Feed
from .types import DeviceHealthReport

log = logging.getLogger(__name__)

HealthFeed = Feed[tuple[DeviceHealthReport, ...]]
HEARTBEAT_SECONDS = 30.0
TIMEOUT_HEARTBEATS = 3  # kubelet reads a device as Unknown after this many missed heartbeats
MESSAGE_MAX = 1024  # kubelet truncates longer messages


def to_pb(
    reports: Sequence[DeviceHealthReport], now: int, timeout: int
) -> health_pb.NodeWatchResourcesResponse:
    return health_pb.NodeWatchResourcesResponse(devices=[
        health_pb.DeviceHealth(
            device=health_pb.DeviceIdentifier(pool_name=r.pool, device_name=r.device),
            health=health_pb.HEALTHY if r.healthy else health_pb.UNHEALTHY,
            last_updated_time=now,
            health_check_timeout_seconds=timeout,
            message=r.message[:MESSAGE_MAX],
        )
        for r in reports
    ])


class DraHealthServicer(health_grpc.DRAResourceHealthServicer):
    def __init__(
        self,
        feed: HealthFeed,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._feed = feed
        self._heartbeat = heartbeat_seconds
        self._timeout = max(1, round(TIMEOUT_HEARTBEATS * heartbeat_seconds))
        self._clock = wall_clock

    async def NodeWatchResources(
        self, request: health_pb.NodeWatchResourcesRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb.NodeWatchResourcesResponse]:
        log.info("kubelet watches device health", extra={"event": "dra_health_watch"})
        while not self._feed.closed:
            seen = self._feed.version
            yield to_pb(self._feed.value, int(self._clock()), self._timeout)
            await self._feed.wait_change(seen, self._heartbeat)
