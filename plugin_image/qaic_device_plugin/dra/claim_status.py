"""What a qaic claim holds, for its `status.devices` (the generic writer is
kubelet/dra/claim_status.py): `kubectl describe resourceclaim` then answers "which SoCs did I
get" with the numbers a user needs, without a node login.

Per allocated device (a SoC, or a whole card or part of one: dra/cards.py), `data`:
`{"socs": [{"pciAddress", "qid", "devNode", "sku", "cardID", "numaNode", "health"}, ...],
"visibleDevices": "<QIDs, as QAIC_VISIBLE_DEVICES>"}` (`numaNode` only with NUMA affinity,
`devNode` as on the host), and two conditions:
- `Ready`: True, reason `Prepared`, once the claim's CDI spec is written (the entry exists only
  then; a device that left the node is `Ready` False, reason `NotOnNode`);
- `Healthy`: True (reason `Healthy`) while every SoC of the device is; else False with the
  first finding's signal as reason (`DeviceNode`, `Sysfs`, `DbcState`, `Ras`, `QaicUtil`,
  `HeldElsewhere`) and the findings as message, kept up to date while the claim is prepared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..kubelet.dra.claim_status import Condition, DeviceStatus
from ..kubelet.dra.types import AllocatedDevice
from ..qaic.inventory import SocState
from .backend import card_id, host_findings


def _reason(signal: str) -> str:
    """`device-node` -> `DeviceNode` (metav1.Condition reasons are CamelCase)."""
    return "".join(part.capitalize() for part in signal.split("-"))


def soc_data(state: SocState) -> dict[str, Any]:
    soc = state.soc
    out: dict[str, Any] = {
        "pciAddress": soc.pci_address,
        "qid": soc.qid,
        "devNode": f"/dev/{soc.dev_relpath}",
        "sku": state.sku.sku.value,
        "cardID": card_id(state),
        "health": "Healthy" if state.healthy else "Unhealthy",
    }
    if soc.numa_node is not None:
        out["numaNode"] = soc.numa_node
    return out


def health_condition(members: Sequence[SocState]) -> Condition:
    bad = [s for s in members if not s.healthy]
    if not bad:
        return Condition("Healthy", True, "Healthy", "")
    message = "; ".join(f"{s.soc.pci_address}: {host_findings(s)}" for s in bad)
    return Condition("Healthy", False, _reason(bad[0].findings[0].signal.value), message)


def device_status(device: AllocatedDevice, members: Sequence[SocState]) -> DeviceStatus:
    """The entry of one prepared device, from its SoCs as they are now (none: gone)."""
    if not members:
        gone = "the device is not on the node any more"
        return DeviceStatus(device.pool, device.device, device.share_id, {"socs": []}, (
            Condition("Ready", False, "NotOnNode", gone),
            Condition("Healthy", False, "NotOnNode", gone)))
    data = {"socs": [soc_data(s) for s in members],
            "visibleDevices": ",".join(str(q) for q in sorted(s.soc.qid for s in members))}
    return DeviceStatus(device.pool, device.device, device.share_id, data, (
        Condition("Ready", True, "Prepared", ""), health_condition(members)))
