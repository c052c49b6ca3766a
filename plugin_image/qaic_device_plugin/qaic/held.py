"""Which SoCs running pods hold under a resource name or device ID we no longer advertise.

kubelet tracks allocations per (resource name, device ID), and the plugin keeps no record of
what it handed out. Flip SKU mode, change ALLOWED_QAIC_DEVICE_SHARES or add a
QAIC_SKU_OVERRIDES entry while pods run, and a SoC a pod holds reappears under a name or ID
kubelet believes free: it would give the SoC to a second pod. Such a SoC is advertised
Unhealthy until its holder is gone. Pure policy: the caller says who holds what.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from .health import Finding, Signal
from .inventory import NodeState, SocState
from .resources import device_ids, is_ours, resource_name, soc_of


@dataclass(frozen=True, slots=True)
class Holding:
    """One device ID that kubelet says a container of a running pod holds."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_id: str

    @property
    def pci(self) -> str:
        return soc_of(self.device_id)

    def describe(self) -> str:
        return f"held by {self.namespace}/{self.pod} under {self.resource_name} as {self.device_id}"


def advertised_as(state: SocState, *, sku_mode: bool, shares: int) -> tuple[str, list[str]]:
    """The resource name and device IDs the plugin advertises this SoC under now."""
    name = resource_name(state.sku.sku if sku_mode else None)
    return name, device_ids(state.soc.pci_address, shares)


def held_elsewhere(
    socs: Sequence[SocState], holdings: Iterable[Holding], *, sku_mode: bool, shares: int
) -> dict[str, Holding]:
    """PCI address -> the first holding (in a stable order) that kubelet files under a name or
    ID we do not advertise now. Holdings of other vendors' resources, and of SoCs this node
    does not have, are none of our business."""
    by_pci = {s.soc.pci_address: s for s in socs}
    held: dict[str, Holding] = {}
    order = sorted(holdings, key=lambda h: (h.namespace, h.pod, h.container, h.device_id))
    for h in order:
        state = by_pci.get(h.pci)
        if state is None or not is_ours(h.resource_name) or h.pci in held:
            continue
        name, ids = advertised_as(state, sku_mode=sku_mode, shares=shares)
        if h.resource_name != name or h.device_id not in ids:
            held[h.pci] = h
    return held


def mark_held(state: NodeState, held: Mapping[str, Holding]) -> NodeState:
    """The node state with each held SoC Unhealthy, the finding saying by whom."""
    if not held:
        return state
    socs: list[SocState] = []
    for s in state.socs:
        h = held.get(s.soc.pci_address)
        if h is not None:
            why = Finding(Signal.HELD_ELSEWHERE, f"{h.describe()}, no longer advertised")
            s = replace(s, findings=(*s.findings, why))
        socs.append(s)
    return replace(state, socs=tuple(socs))
