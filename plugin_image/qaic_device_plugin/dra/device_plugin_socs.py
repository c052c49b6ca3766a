"""The move from device-plugin mode to DRA mode (docs/provisioning.md#moving-between-modes):
SoCs the device-plugin mode still holds or can still hand out on this node are left out of
the driver's ResourceSlices until they are free of it.

Which: every SoC a running container holds under a `qualcomm.com/qaic*` resource (device ID
`<pci>` or `<pci>::<n>` with shares, qaic/resources.py), and every SoC a device plugin on
the node still serves (the old DaemonSet is deleted only at the end of the `pulumi up` that
starts this driver; until then kubelet may still give its SoCs to a new pod). Left out means
not published at all: neither the SoC device nor a card or part containing it (a card is
offered only with all its SoCs, dra/cards.py), nor that card's counter set; the card's other
SoCs are offered on their own meanwhile, as after a hot-remove.

When: asked at start, before the first slice is written, then every POLL_SECONDS while
anything is withheld or the API could not be asked (PodResources v1 has no Watch: kubelet
answers List from memory in milliseconds, so a poll is cheap). A released SoC is published
within POLL_SECONDS plus one slice write. Once nothing is held and no device plugin serves,
the question is never asked again: nothing can bring device-plugin holdings back under a
running DRA driver short of a second stack on the same node, which the stack refuses.

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
    """Which SoCs to leave out of the slices because the device-plugin mode has them."""

    def __init__(self, socket: Path, *, poll_seconds: float = POLL_SECONDS,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._socket = socket
        self.poll_seconds = poll_seconds
        self._timeout = timeout
        #: PCI address -> why it is withheld (who holds it, or the device plugin serving it).
        self.withheld: dict[str, str] = {}
        self.unavailable = False
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
        why: dict[str, str] = {}
        for r in use.offered:
            for did in r.device_ids:
                why.setdefault(soc_of(did), f"served by a device plugin as {r.resource_name}")
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
        """Poll while anything is withheld or kubelet did not answer, calling `changed` when
        the withheld SoCs change; then idle for good (the caller's loop must not end)."""
        while not self.done:
            await asyncio.sleep(self.poll_seconds)
            if await self.poll():
                changed()
        await asyncio.Event().wait()
