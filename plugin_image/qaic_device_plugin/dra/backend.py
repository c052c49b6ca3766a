"""The DRA bridge: qaic SoC state -> DRA devices, and claims -> per-claim CDI specs.

The DRA counterpart of backend.py, and like it the only DRA module that knows both sides.
Each SoC is one device named after its PCI address (`soc-0000-35-00-0`, a DNS label) with
attributes the scheduler can match on: `cardID` (one card: `matchAttribute: qaic.qualcomm.com/
cardID`), `sku`, `qid`, and the standard `resource.kubernetes.io/pciBusID` and `/numaNode`.
An unhealthy SoC stays listed with a NoSchedule taint (kept, so it is visible and comes back
by itself; device taints are GA in 1.37); a hot-removed SoC is withdrawn. The same health
goes to kubelet's dra-health stream (`QaicDraDriver.health_reports`), which shows it in the
status of the pods that hold the SoC, with the reasons as its message.

Sharing (ALLOWED_QAIC_DEVICE_SHARES > 1, consumable capacity, KEP-5075, DRAConsumableCapacity
beta and on in 1.37): each SoC device allows multiple allocations and has the capacity
`qaic.qualcomm.com/shares` = N, of which a claim takes 1 unless it asks for more (the request
policy: default 1, whole numbers from 1). The scheduler then allocates a SoC to N claims at
most, each with a `shareID`; each claim gets its own CDI spec naming the same device node and
QID. No whole cards or parts then (as device-plugin mode turns its card preference off with
shares): a card device over shared SoCs would promise a card nobody else uses.

The monitoring view (QAIC_DRA_MONITOR_DEVICE): one more device, `all-socs` (type `all`), that
stands for every SoC of the node and is prepared only for an adminAccess allocation (the API
server allows those only in namespaces labelled for it): a monitor claims it instead of
`allocationMode: All` over the SoC devices, because the 1.37 allocator does not exempt
adminAccess from counters (kubernetes/kubernetes#140729), so an All request over SoCs that
consume a card's counters cannot be allocated while any of them is in use. It consumes no
counters, carries no taint (a monitor wants the bad SoCs too) and blocks nobody: admin
allocations do not count as using a device.

`cardID` is a card only where that is proven (qaic-util's SKU, or QAIC_SKU_OVERRIDES): four
single-SoC cards behind a server board's PCIe switch look exactly like an Ultra card in sysfs,
so an unproven grouping publishes each SoC's own address, and `matchAttribute: cardID` is
never satisfied by a guess (device-plugin mode's NFD label does the same).

Preparing a claim writes one transient CDI spec, `qaic.qualcomm.com-claim_<uid>.json`, with one
CDI device per SoC (its /dev/accel node) and the spec-wide `QAIC_VISIBLE_DEVICES` listing all
the claim's QIDs, so SoCs of two SKUs in one claim are all visible (unlike two device-plugin
resources, whose variables collide); a whole card or part of one (dra/cards.py) is one CDI
device with the nodes of all its SoCs. It is written from the SoCs as they are now every time,
also for a claim prepared before (after a reboot the spec is gone and accel numbers may have
moved), and says the lowest CDI version it needs. An unhealthy SoC is prepared only for an
allocation that tolerates its taint or has adminAccess, as the scheduler would allocate it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from lightkube.models.resource_v1 import Device

from ..core.cdi_version import minimum_version
from ..kubelet.dra.types import (
    AllocatedClaim,
    AllocatedDevice,
    ClaimRef,
    DeviceHealthReport,
    PreparedDevice,
    PrepareError,
    Taint,
)
from ..qaic.inventory import SocState
from ..qaic.nfd import remove_if_present, replace_if_changed
from ..qaic.resources import VISIBLE_DEVICES_ENV
from . import cards

log = logging.getLogger(__name__)

DRIVER_NAME = "qaic.qualcomm.com"  # DNS subdomain, like dra-example-driver's gpu.example.com
CDI_KIND = f"{DRIVER_NAME}/claim"
STANDARD = "resource.kubernetes.io/"
TAINT_UNHEALTHY = f"{DRIVER_NAME}/unhealthy"
#: The monitoring view of the whole node, and its `type` attribute.
MONITOR_DEVICE, TYPE_ALL = "all-socs", "all"


def device_name(pci: str) -> str:
    """`0000:35:00.0` -> `soc-0000-35-00-0`: a DNS label, injective for PCI addresses."""
    return "soc-" + pci.lower().replace(":", "-").replace(".", "-")


def unhealthy_taint(state: SocState) -> Taint | None:
    """The taint an unhealthy SoC is published with (its first finding's signal as value)."""
    if state.healthy:
        return None
    return Taint(TAINT_UNHEALTHY, state.findings[0].signal.value, "NoSchedule")


def card_id(state: SocState) -> str:
    """The SoC's card where it is proven, else the SoC's own address (a card of its own)."""
    soc = state.soc
    return soc.card_id if soc.card_certain else soc.pci_address


#: The consumable capacity of a shared SoC (qualified with the driver's name by the API).
SHARES = "shares"


def share_capacity(shares: int) -> dict[str, Any]:
    """`capacity` of a SoC shared by up to `shares` claims: one share each unless a claim asks
    for more (`capacity.requests: {qaic.qualcomm.com/shares: k}`; all of them = the SoC alone)."""
    return {SHARES: {"value": str(shares), "requestPolicy": {
        "default": "1", "validRange": {"min": "1", "step": "1"}}}}


def to_device(state: SocState, shares: int = 1) -> Device:
    soc = state.soc
    attrs: dict[str, dict[str, Any]] = {
        "sku": {"string": state.sku.sku.value},
        "cardID": {"string": card_id(state)},
        "qid": {"int": soc.qid},
        STANDARD + "pciBusID": {"string": soc.pci_address},
    }
    if soc.numa_node is not None:  # the standard says: no attribute without NUMA affinity
        attrs[STANDARD + "numaNode"] = {"int": soc.numa_node}
    taint = unhealthy_taint(state)
    taints = None
    if taint is not None:
        taints = [{"key": taint.key, "value": taint.value, "effect": taint.effect}]
    raw: dict[str, Any] = {"name": device_name(soc.pci_address), "attributes": attrs,
                           "taints": taints}
    if shares > 1:
        raw["allowMultipleAllocations"] = True
        raw["capacity"] = share_capacity(shares)
    return cast(Device, Device.from_dict(raw))


def soc_health_reports(pool: str, socs: Sequence[SocState]) -> tuple[DeviceHealthReport, ...]:
    """Every SoC's health, with the reasons as the message."""
    return tuple(
        DeviceHealthReport(
            pool, device_name(s.soc.pci_address), s.healthy,
            "; ".join(f"{f.signal.value}: {f.detail}" for f in s.findings),
        )
        for s in sorted(socs, key=lambda s: s.soc.pci_address)
    )


def _nodes(members: Sequence[SocState]) -> tuple[str, ...]:
    return tuple(s.soc.dev_relpath for s in members)


def host_findings(state: SocState) -> str:
    """Why a SoC is unhealthy, with device nodes as the host names them: findings name the node
    where this process sees it (QAIC_DEV_ROOT, /host/dev in the DaemonSet), and the operator
    looks on the host."""
    soc = state.soc
    host = f"/dev/{soc.dev_relpath}"
    mounted = re.compile(r"\S*/" + re.escape(soc.dev_relpath) + r"(?![0-9])")
    return "; ".join(f"{f.signal.value}: {mounted.sub(host, f.detail)}" for f in state.findings)


def cdi_spec_path(cdi_dir: Path, uid: str) -> Path:
    return cdi_dir / f"{DRIVER_NAME}-claim_{uid}.json"


class QaicDraDriver:
    """Prepares claims against the node's current SoCs (updated by the app on every refresh)."""

    def __init__(self, node_name: str, cdi_dir: Path, *, partitions: bool = False,
                 shares: int = 1, monitor_device: bool = False) -> None:
        self.node_name = node_name
        self.cdi_dir = cdi_dir
        #: Publish MONITOR_DEVICE, every SoC for adminAccess claims.
        self.monitor_device = monitor_device
        #: Claims that may share one SoC (ALLOWED_QAIC_DEVICE_SHARES); 1: a SoC is one claim's.
        self.shares = shares
        #: Offer whole cards and parts too; only with a publisher that writes `counter_sets`
        #: (devices naming a counter set the pool lacks make the scheduler refuse the pool),
        #: and never with shares.
        self.partitions = partitions and shares == 1
        self._socs: dict[str, SocState] = {}
        #: Each published device's SoCs: a SoC itself, or a whole card or part (cards.py).
        self._members: dict[str, tuple[SocState, ...]] = {}
        #: The counter sets the devices consume (published in slices of their own).
        self.counter_sets: list[dict[str, Any]] = []
        #: Devices whose device nodes changed with the last update (see update()).
        self.moved: frozenset[str] = frozenset()
        self._known_nodes: dict[str, tuple[str, ...]] | None = None
        #: Asked at every prepare: SoCs (PCI address -> who has them) that pods of the
        #: device-plugin mode hold right now (dra/device_plugin_socs.py). The slices leave
        #: them out, but during the move from device-plugin mode a pod may get a SoC from
        #: the old plugin after a claim was allocated it and before the driver's next poll.
        self.held_elsewhere: Callable[[], Awaitable[Mapping[str, str]]] | None = None

    def update(self, socs: Sequence[SocState]) -> list[Device]:
        """Take a new snapshot; return the devices to publish (`counter_sets` with them).

        `moved` then names the devices whose SoCs' device nodes are not what they were when
        the device was last seen (a driver reload or re-probe hands out accel numbers again,
        maybe while the SoC was gone); after the first snapshot, every device (this process
        has seen none before, and a spec may be older than the process)."""
        self._socs = {device_name(s.soc.pci_address): s for s in socs}
        if not self.partitions:
            self._members = {n: (s,) for n, s in self._socs.items()}
            devices = [to_device(s, self.shares) for _, s in sorted(self._socs.items())]
        else:
            parts = cards.partition([(s, to_device(s)) for _, s in sorted(self._socs.items())])
            self._members = {**{n: (s,) for n, s in self._socs.items()}, **parts.members}
            self.counter_sets = parts.counter_sets
            devices = parts.devices
        if self.monitor_device and self._socs:
            self._members[MONITOR_DEVICE] = tuple(s for _, s in sorted(self._socs.items()))
            devices.append(cast(Device, Device.from_dict({"name": MONITOR_DEVICE, "attributes": {
                "type": {"string": TYPE_ALL}, "socCount": {"int": len(self._socs)}}})))
        now = {n: _nodes(m) for n, m in self._members.items()}
        known = self._known_nodes
        self.moved = frozenset(n for n, v in now.items() if known is None or known.get(n, v) != v)
        self._known_nodes = {**(known or {}), **now}
        return devices

    def health_reports(self) -> tuple[DeviceHealthReport, ...]:
        """kubelet's dra-health view of every published device: each SoC, then each device
        of several SoCs (card, part, the monitoring view), healthy while all its SoCs are."""
        groups = {n: m for n, m in self._members.items() if n not in self._socs}
        return (soc_health_reports(self.node_name, list(self._socs.values()))
                + cards.group_health_reports(self.node_name, groups))

    def units(self, device: str) -> frozenset[str]:
        """The SoCs a device uses (a card or part: all of its SoCs), by their device names,
        so a card claim and a claim for one of its SoCs are seen to overlap."""
        members = self._members.get(device)
        if not members:
            return frozenset({device})
        return frozenset(device_name(s.soc.pci_address) for s in members)

    def members(self, device: str) -> tuple[SocState, ...]:
        """The SoCs of a published device as they are now (none: not on the node any more)."""
        return self._members.get(device, ())

    async def prepare(self, claim: AllocatedClaim) -> list[PreparedDevice]:
        uid = claim.ref.uid
        chosen: list[tuple[AllocatedDevice, tuple[SocState, ...]]] = []
        held = await self.held_elsewhere() if self.held_elsewhere is not None else {}
        for d in claim.devices:
            if d.pool != self.node_name:
                raise PrepareError(f"device {d.device} is in pool {d.pool}, not {self.node_name}")
            members = self._members.get(d.device)
            pcis = ([s.soc.pci_address for s in members] if members is not None
                    else [p for p in held if device_name(p) == d.device])
            for pci in pcis:
                if pci in held:
                    raise PrepareError(
                        f"SoC {pci} of device {d.device} is {held[pci]} (a pod of the "
                        "device-plugin mode, started during the move to DRA mode); this "
                        "claim's pod starts once that pod has ended")
            if members is None:
                raise PrepareError(f"device {d.device} is not on this node (any more)")
            if d.device == MONITOR_DEVICE and not d.admin_access:
                raise PrepareError(
                    f"device {MONITOR_DEVICE} (every SoC of the node) is prepared only for "
                    "claims with adminAccess, in a namespace labelled "
                    "resource.kubernetes.io/admin-access=true; claim SoCs of another class")
            for state in members:
                taint = unhealthy_taint(state)
                if taint is not None and not d.tolerates(taint):
                    raise PrepareError(self._unhealthy(state))
            chosen.append((d, members))
        if not chosen:
            return []
        # One CDI device per device: two shares of one SoC in a claim are one device node.
        nodes = {d.device: m for d, m in chosen}
        qids = ",".join(str(q) for q in sorted({s.soc.qid for m in nodes.values() for s in m}))
        body: dict[str, Any] = {
            "kind": CDI_KIND,
            "containerEdits": {"env": [f"{VISIBLE_DEVICES_ENV}={qids}"]},
            "devices": [
                {
                    "name": f"{uid}-{name}",
                    "containerEdits": {
                        "deviceNodes": [{"path": f"/dev/{s.soc.dev_relpath}", "permissions": "rw"}
                                        for s in m]
                    },
                }
                for name, m in sorted(nodes.items())
            ],
        }
        spec = {"cdiVersion": minimum_version(body), **body}
        path = cdi_spec_path(self.cdi_dir, uid)
        replace_if_changed(path, json.dumps(spec, indent=2) + "\n")
        log.info(
            "CDI spec written",
            extra={"event": "dra_cdi_written", "path": str(path), VISIBLE_DEVICES_ENV: qids},
        )
        return [
            PreparedDevice((d.request,), self.node_name, d.device,
                           (f"{CDI_KIND}={uid}-{d.device}",), d.share_id)
            for d, _ in chosen
        ]

    @staticmethod
    def _unhealthy(state: SocState) -> str:
        """Which SoC (PCI address and device node as on the host), why, and what to do."""
        soc = state.soc
        return (
            f"SoC {soc.pci_address} (/dev/{soc.dev_relpath}) is unhealthy: {host_findings(state)}"
            f". Delete the pod to get another SoC, or tolerate the taint {TAINT_UNHEALTHY} in "
            f"the claim"
        )

    async def unprepare(self, ref: ClaimRef, devices: Sequence[PreparedDevice]) -> None:
        if remove_if_present(cdi_spec_path(self.cdi_dir, ref.uid)):
            log.info("CDI spec removed", extra={"event": "dra_cdi_removed", "claim": ref.uid})
