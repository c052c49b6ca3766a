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


def base_request(request: str) -> str:
    """`socs/ultra` -> `socs`: the request a container names (resourceclaim.BaseRequestRef).

    A result allocated from a prioritized list (`firstAvailable`) names the subrequest that
    was chosen, `<request>/<subrequest>`; kubelet hands a container the devices whose request
    names contain the container's `claims[].request`, which is always the parent.
    """
    return request.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Taint:
    """A device taint as a driver publishes it (resource.k8s.io/v1 DeviceTaint)."""

    key: str
    value: str
    effect: str


@dataclass(frozen=True, slots=True)
class Toleration:
    """One `results[].tolerations` entry (resource.k8s.io/v1 DeviceToleration)."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        """The API's matching rule (DeviceToleration.ToleratesTaint): an empty key or effect
        matches any; `Exists` matches any value, `Equal` (the default) only the same one."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.operator in ("", "Equal") and self.value == taint.value


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One `status.allocation.devices.results` entry for our driver."""

    request: str  # as allocated: `<request>` or `<request>/<subrequest>`
    pool: str
    device: str
    share_id: str | None = None
    admin_access: bool = False
    tolerations: tuple[Toleration, ...] = ()

    @property
    def exclusive(self) -> bool:
        """Whether no other claim may hold this device while it is prepared for this one.

        adminAccess allocations (monitoring, diagnostics) coexist with anybody; a result with
        a shareID was allocated from a device's consumable capacity, which the scheduler
        accounts for, so such devices are shareable. Everything else is one claim's alone.
        """
        return not self.admin_access and self.share_id is None

    def coexists_with(self, other: AllocatedDevice) -> bool:
        """May this allocation and `other` hold the same hardware at once? When either has
        adminAccess, or both are shares (shareID) of a device's consumable capacity. A share
        and a whole allocation never: the scheduler does not share a device allocated whole
        (a checkpoint from before a change of the share count could still hold one)."""
        return (self.admin_access or other.admin_access
                or (self.share_id is not None and other.share_id is not None))

    def tolerates(self, taint: Taint) -> bool:
        """May this allocation use a device with `taint`? adminAccess may use any device."""
        return self.admin_access or any(t.tolerates(taint) for t in self.tolerations)


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
    """A prepared claim as the checkpoint keeps it: the driver's answer, and the allocation it
    was prepared from, so a later prepare can re-run the driver for the same devices without
    the API server, and adminAccess is known when another claim wants the same device."""

    ref: ClaimRef
    devices: tuple[PreparedDevice, ...]
    allocated: tuple[AllocatedDevice, ...] = ()

    def allocation(self) -> AllocatedClaim:
        """The allocation to prepare again; an entry written before `allocated` was kept is
        rebuilt from the devices (no adminAccess, no tolerations: as it was then)."""
        if self.allocated:
            return AllocatedClaim(self.ref, self.allocated)
        return AllocatedClaim(
            self.ref,
            tuple(
                AllocatedDevice(d.requests[0] if d.requests else "", d.pool, d.device, d.share_id)
                for d in self.devices
            ),
        )


class PrepareError(Exception):
    """A claim that cannot be prepared now; kubelet reports it and retries."""


class ClaimSource(Protocol):
    """Reads a claim's allocation (from the API server): kubelet does not send it."""

    async def get(self, ref: ClaimRef) -> AllocatedClaim: ...


class DraDriver(Protocol):
    async def prepare(self, claim: AllocatedClaim) -> Sequence[PreparedDevice]:
        """Make the devices usable (e.g. write a CDI spec); raise PrepareError to refuse.

        Also called for a claim that is already prepared (kubelet sends prepare again after
        a node reboot or its own restart), with the same allocation: node-local state such as
        a CDI spec on a tmpfs, or device node numbers, may have changed since, so it must be
        made again from the node as it is now, not assumed to be there.
        """
        ...

    async def unprepare(self, ref: ClaimRef, devices: Sequence[PreparedDevice]) -> None:
        """Undo prepare. `devices` is empty when the claim is unknown: still clean up by UID."""
        ...

    def units(self, device: str) -> frozenset[str]:
        """The pieces of hardware `device` (of this driver's pool) uses, by any stable names.

        Two claims may not hold the same unit at once (NodeService's last line of defence),
        so a driver whose devices overlap says so here: a whole card and its SoCs, a part of
        a card and the card, are different devices sharing units. Default: each device is a
        unit of its own, which is right for drivers whose devices never overlap.
        """
        return frozenset({device})
