"""Translation between the plain types and the v1beta1 messages, in one place."""

from __future__ import annotations

from collections.abc import Iterable

from .api import deviceplugin_pb2 as pb
from .types import (
    HEALTHY,
    UNHEALTHY,
    ContainerAllocation,
    Device,
    DeviceSpec,
    Mount,
    PluginOptions,
)


def options_to_pb(options: PluginOptions) -> pb.DevicePluginOptions:
    return pb.DevicePluginOptions(
        pre_start_required=options.pre_start_required,
        get_preferred_allocation_available=options.get_preferred_allocation_available,
    )


def options_from_pb(msg: pb.DevicePluginOptions) -> PluginOptions:
    return PluginOptions(
        pre_start_required=msg.pre_start_required,
        get_preferred_allocation_available=msg.get_preferred_allocation_available,
    )


def devices_to_pb(devices: Iterable[Device]) -> pb.ListAndWatchResponse:
    return pb.ListAndWatchResponse(
        devices=[
            pb.Device(
                ID=d.id,
                health=HEALTHY if d.healthy else UNHEALTHY,
                topology=(
                    pb.TopologyInfo(nodes=[pb.NUMANode(ID=n) for n in d.numa_nodes])
                    if d.numa_nodes
                    else None
                ),
            )
            for d in devices
        ]
    )


def allocation_to_pb(alloc: ContainerAllocation) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=dict(alloc.envs),
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in alloc.mounts
        ],
        devices=[
            pb.DeviceSpec(
                container_path=d.container_path, host_path=d.host_path, permissions=d.permissions
            )
            for d in alloc.devices
        ],
        annotations=dict(alloc.annotations),
        cdi_devices=[pb.CDIDevice(name=n) for n in alloc.cdi_devices],
    )


def allocation_from_pb(msg: pb.ContainerAllocateResponse) -> ContainerAllocation:
    return ContainerAllocation(
        devices=[DeviceSpec(d.container_path, d.host_path, d.permissions) for d in msg.devices],
        envs=dict(msg.envs),
        mounts=[Mount(m.container_path, m.host_path, m.read_only) for m in msg.mounts],
        annotations=dict(msg.annotations),
        cdi_devices=[c.name for c in msg.cdi_devices],
    )
