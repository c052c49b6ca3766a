"""The kubelet-facing vocabulary, free of protobuf so backends never import generated code."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .feed import Feed

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"

# Extended resource names: a DNS-1123 domain, a slash, a qualified name; kubernetes.io is reserved.
_RESOURCE_NAME = re.compile(
    r"^(?P<domain>[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/"
    r"(?P<name>[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$"
)


def valid_extended_resource_name(name: str) -> bool:
    """Mirror kubelet's check, so a bad name is caught before kubelet rejects Register."""
    m = _RESOURCE_NAME.match(name)
    if not m:
        return False
    domain = m.group("domain")
    return not (domain == "kubernetes.io" or domain.endswith(".kubernetes.io"))


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    healthy: bool
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class ContainerAllocation:
    """What one container gets; always carries DeviceSpecs (env alone is lost on daemon-reload)."""

    devices: Sequence[DeviceSpec]
    envs: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[Mount] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    cdi_devices: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class PluginOptions:
    pre_start_required: bool = False
    get_preferred_allocation_available: bool = False


class RefusalKind(enum.Enum):
    INVALID_ARGUMENT = "invalid-argument"
    FAILED_PRECONDITION = "failed-precondition"


class Refusal(Exception):
    """A documented refusal: the server maps it to a gRPC status, never a partial reply."""

    def __init__(self, kind: RefusalKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Backend(Protocol):
    """One extended resource, as the generic server needs it."""

    @property
    def resource_name(self) -> str: ...

    @property
    def options(self) -> PluginOptions: ...

    @property
    def devices(self) -> Feed[tuple[Device, ...]]: ...

    async def allocate(self, requests: Sequence[Sequence[str]]) -> list[ContainerAllocation]: ...

    async def preferred_allocation(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]: ...

    async def pre_start(self, device_ids: Sequence[str]) -> None: ...
