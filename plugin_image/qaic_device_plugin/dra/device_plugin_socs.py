"""The move from device-plugin mode to DRA mode (docs/operations.md, "Moving between modes"):
SoCs that running pods of the device-plugin mode still hold on this node are left out of
the driver's ResourceSlices until those pods release them.

Which: every SoC a running container holds under a `qualcomm.com/qaic*` resource (device ID
`<pci>` or `<pci>::<n>` with shares, qaic/resources.py). Left out means not published at
all: neither the SoC device nor a card or part containing it (a card is offered only with
all its SoCs, dra/cards.py), nor that card's counter set; the card's other SoCs are offered
on their own meanwhile, as after a hot-remove.

Not withheld: the free SoCs the old device plugin still serves. The `pulumi up` that starts
this driver deletes the old DaemonSet only at its end, after the samples of the new mode run
(they need DRA devices): withholding every served SoC would deadlock that update. While the
device plugin serves, a new pod asking `qualcomm.com/qaic` is still given SoCs by it (the
scheduler leaves an extended resource to DRA only where the node's allocatable is 0), so
kubelet is asked again while it serves, and a SoC such a pod takes is withdrawn at the next
poll. A claim allocated that SoC within that poll period would share it: the operator's
guide says not to start qaic workloads during the switch.

When: asked at start, before the first slice is written, then every POLL_SECONDS while a
SoC is withheld, the device plugin serves, or kubelet did not answer (PodResources v1 has no
Watch; kubelet answers from memory in milliseconds, so a poll is cheap). A released SoC is
published within POLL_SECONDS plus one slice write. Once nothing is held and no device
plugin serves (GetAllocatableResources lists nothing of ours: kubelet empties it the moment
the plugin's endpoint goes), kubelet is never asked again.

PodResources missing or not answering: said once, and every SoC is published. Kubelet always
serves the socket (it cannot be turned off), so missing means the DaemonSet does not mount it
(a stack from before this change, a hand-made deployment) or kubelet is restarting; in the
first case withholding everything would make DRA mode unusable on a node that may never have
run the device plugin, for a risk that exists only during a migration. It is asked again at
each poll, so a kubelet that comes back is heard (a stat of a missing socket costs nothing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ..kubelet.device_plugin_use import device_plugin_use
from ..kubelet.podresources import DEFAULT_TIMEOUT_SECONDS, PodResourcesUnavailable
from ..qaic.inventory import SocState
from ..qaic.resources import is_ours, soc_of

log = logging.getLogger(__name__)

#: How often kubelet is asked while something is withheld: the bound on how late a released
#: SoC is offered (plus one slice write).
POLL_SECONDS = 2.0


class DevicePluginSocs:
    """Which SoCs to leave out of the slices because pods of the device-plugin mode hold
    them."""

    def __init__(self, socket: Path, *, poll_seconds: float = POLL_SECONDS,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._socket = socket
        self.poll_seconds = poll_seconds
        self._timeout = timeout
        #: PCI address -> why it is withheld (who holds it, under which name and ID).
        self.withheld: dict[str, str] = {}
        self.unavailable = False
        self.served = 0  # SoCs a device plugin on the node serves (as of the last poll)
        self.done = False  # asked, and nothing held or served: never asked again

    def offerable(self, socs: Sequence[SocState]) -> list[SocState]:
        """`socs` without the withheld ones."""
        return [s for s in socs if s.soc.pci_address not in self.withheld]

    async def poll(self) -> bool:
        """Ask kubelet once; True if the withheld SoCs changed."""
        try:
            use = await device_plugin_use(self._socket, is_ours, self._timeout)
        except PodResourcesUnavailable as e:
            if not self.unavailable:
                log.warning(
                    "kubelet PodResources API unavailable; every SoC is published, none "
                    "withheld for pods of the device-plugin mode",
                    extra={"event": "pod_resources_unavailable", "error": str(e)},
                )
            self.unavailable = True
            return self._set({})
        if self.unavailable:
            log.info("kubelet PodResources API answers again",
                     extra={"event": "pod_resources_available"})
        self.unavailable = False
        served = len({soc_of(d) for r in use.offered for d in r.device_ids})
        if served and not self.served:
            log.warning("a device plugin on this node still serves SoCs; a pod it gives one "
                        f"to is seen within {self.poll_seconds:g} s", extra={
                            "event": "device_plugin_serving", "socs": served})
        elif self.served and not served:
            log.info("the device plugin on this node stopped serving",
                     extra={"event": "device_plugin_stopped"})
        self.served = served
        why: dict[str, str] = {}
        for c in sorted(use.held, key=lambda c: (c.namespace, c.pod, c.container)):
            for did in c.device_ids:
                why[soc_of(did)] = (f"held by {c.namespace}/{c.pod} ({c.container}) under "
                                    f"{c.resource_name} as {did}")
        changed = self._set(why)
        if use.idle:
            self.done = True
            log.info("no SoC held or served by the device-plugin mode; kubelet is not asked "
                     "again", extra={"event": "device_plugin_gone"})
        return changed

    def _set(self, why: dict[str, str]) -> bool:
        old = self.withheld
        for pci in sorted(why.keys() - old.keys()):
            log.warning("SoC left out of the ResourceSlices: the device-plugin mode has it",
                        extra={"event": "soc_withheld", "pci": pci, "reason": why[pci]})
        for pci in sorted(old.keys() - why.keys()):
            log.info("SoC released by the device-plugin mode; published",
                     extra={"event": "soc_released", "pci": pci, "was": old[pci]})
        self.withheld = why
        return why.keys() != old.keys()

    async def follow(self, changed: Callable[[], None]) -> None:
        """Poll while anything is withheld, a device plugin serves or kubelet did not answer,
        calling `changed` when the withheld SoCs change; then idle for good (the caller's
        loop must not end)."""
        while not self.done:
            await asyncio.sleep(self.poll_seconds)
            if await self.poll():
                changed()
        await asyncio.Event().wait()
