"""Plain data between the generic DRA machinery and a driver (no gRPC, no API objects)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

PLUGIN_TYPE = "DRAPlugin"  # pluginregistration v1: registerapi.DRAPlugin
# What kubelet 1.37 accepts in supported_versions (k8s.io/kubelet/pkg/apis/dra/v1 types.go,
# DRAPluginService); kubelet then calls /k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/...
DRA_SERVICE_V1 = "v1.DRAPlugin"
DRA_SOCKET = "dra.sock"  # the name kubeletplugin hard-codes under plugins/<driver>/
# The optional health service (k8s.io/kubelet/pkg/apis/dra-health/v1 types.go,
# DRAResourceHealthService): advertised beside DRA_SERVICE_V1, kubelet (ResourceHealthStatus,
# beta and on since 1.36) then streams /v1.DRAResourceHealth/NodeWatchResources on dra.sock
# and shows each device's health in the status of the pods that hold it.
HEALTH_SERVICE_V1 = "v1.DRAResourceHealth"


@dataclass(frozen=True, slots=True)
class DeviceHealthReport:
    """One device's health as the driver last determined it."""

    pool: str
    device: str
    healthy: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """What kubelet sends: a claim's identity only, never its allocation."""

    namespace: str
    uid: str
    name: str


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One `status.allocation.devices.results` entry for our driver."""

    request: str
    pool: str
    device: str
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class AllocatedClaim:
    ref: ClaimRef
    devices: tuple[AllocatedDevice, ...]


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One device of a prepared claim, as NodePrepareResources returns it."""

    requests: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    ref: ClaimRef
    devices: tuple[PreparedDevice, ...]


class PrepareError(Exception):
    """A claim that cannot be prepared now; kubelet reports it and retries."""


class ClaimSource(Protocol):
    """Reads a claim's allocation (from the API server): kubelet does not send it."""

    async def get(self, ref: ClaimRef) -> AllocatedClaim: ...


class DraDriver(Protocol):
    async def prepare(self, claim: AllocatedClaim) -> Sequence[PreparedDevice]:
        """Make the devices usable (e.g. write a CDI spec); raise PrepareError to refuse."""
        ...

    async def unprepare(self, ref: ClaimRef, devices: Sequence[PreparedDevice]) -> None:
        """Undo prepare. `devices` is empty when the claim is unknown: still clean up by UID."""
        ...
