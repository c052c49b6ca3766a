"""What kubelet's device manager does with some resource names on this node: which device IDs
running containers hold under them, and which it can still hand out (a device plugin serves
them). Read from the PodResources API (kubelet/podresources.py); generic, no vendor in here.

Why a DRA driver asks: a node moved from device-plugin mode to DRA mode keeps its running
pods, and kubelet still files their devices under the device plugin's resource names. Until
those pods end, and while the device plugin still serves (the old DaemonSet goes only at the
end of the `pulumi up` that brings the driver), the same hardware must not be offered as DRA
devices, or the scheduler would hand it to a claim as well.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .podresources import (
    DEFAULT_TIMEOUT_SECONDS,
    ContainerDevices,
    ResourceDevices,
    allocatable_devices,
    list_devices,
)


@dataclass(frozen=True, slots=True)
class DevicePluginUse:
    """Of the resources a caller asked about: `held`, the devices running containers hold
    (kubelet's List); `offered`, those a device plugin serves Healthy now, held or not
    (kubelet's GetAllocatableResources: empty at once when the plugin's endpoint goes,
    although the node's capacity keeps the resource for kubelet's 5 minute grace period)."""

    held: tuple[ContainerDevices, ...]
    offered: tuple[ResourceDevices, ...]

    @property
    def idle(self) -> bool:
        """Nothing held and no device plugin serving: the device-plugin mode is gone."""
        return not self.held and not self.offered


async def device_plugin_use(
    socket: Path, wanted: Callable[[str], bool], timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> DevicePluginUse:
    """Two calls (List, GetAllocatableResources), each bounded by `timeout`; raises
    PodResourcesUnavailable when either cannot be made."""
    held = tuple(c for c in await list_devices(socket, timeout)
                 if wanted(c.resource_name) and c.device_ids)
    offered = tuple(r for r in await allocatable_devices(socket, timeout)
                    if wanted(r.resource_name) and r.device_ids)
    return DevicePluginUse(held, offered)
