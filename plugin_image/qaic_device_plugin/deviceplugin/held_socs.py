"""What running pods hold (kubelet's PodResources API), in the qaic policy's terms: the bridge
between kubelet/podresources.py and qaic/held.py (split from backend.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..kubelet.podresources import (
    DEFAULT_TIMEOUT_SECONDS,
    PodResourcesUnavailable,
    list_devices,
)
from ..qaic.held import Holding, advertised_as, held_elsewhere, mark_held
from ..qaic.inventory import NodeState
from ..qaic.resources import is_ours

log = logging.getLogger(__name__)


class HeldSocs:
    """SoCs that running pods hold under a resource name or device ID we no longer advertise
    (SKU mode, shares or an override changed), learned from kubelet's PodResources API.

    Asked at start, then on each resync only while some SoC is held (kubelet has no event for
    a pod ending). Unavailable (no socket, an error) counts as nothing held, said once.
    """

    def __init__(
        self,
        socket: Path,
        *,
        sku_mode: bool,
        shares: int,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        on_held: Callable[[int], None] | None = None,
    ) -> None:
        self._socket = socket
        self._sku_mode = sku_mode
        self._shares = shares
        self._timeout = timeout
        self._on_held = on_held
        self._holdings: tuple[Holding, ...] = ()
        self._held: dict[str, Holding] = {}
        self._unavailable = False

    @property
    def any_held(self) -> bool:
        return bool(self._held)

    async def poll(self) -> None:
        try:
            listed = await list_devices(self._socket, self._timeout)
        except PodResourcesUnavailable as e:
            if not self._unavailable:
                log.warning(
                    "kubelet PodResources API unavailable; assuming no SoC is held under "
                    "another resource name or device ID",
                    extra={"event": "pod_resources_unavailable", "error": str(e)},
                )
            self._unavailable = True
            self._holdings = ()
            return
        self._unavailable = False
        self._holdings = tuple(
            Holding(c.namespace, c.pod, c.container, c.resource_name, did)
            for c in listed
            if is_ours(c.resource_name)
            for did in c.device_ids
        )

    def apply(self, state: NodeState) -> NodeState:
        """`state` with every SoC held elsewhere Unhealthy; logs each start and end of one."""
        held = held_elsewhere(
            state.socs, self._holdings, sku_mode=self._sku_mode, shares=self._shares
        )
        by_pci = state.by_pci()
        for pci, h in held.items():
            if self._held.get(pci) != h:
                name, ids = advertised_as(by_pci[pci], sku_mode=self._sku_mode, shares=self._shares)
                log.warning(
                    "SoC held by a running pod under a resource name or device ID no longer "
                    "advertised; Unhealthy until that pod releases it",
                    extra={
                        "event": "soc_held_elsewhere",
                        "pci": pci,
                        "reason": h.describe(),
                        "namespace": h.namespace,
                        "pod": h.pod,
                        "container": h.container,
                        "resource": h.resource_name,
                        "device_id": h.device_id,
                        "advertised_as": name,
                        "advertised_ids": ids,
                    },
                )
        for pci in self._held.keys() - held.keys():
            old = self._held[pci]
            log.info(
                "SoC released by the pod that held it under a former name or ID",
                extra={
                    "event": "soc_released",
                    "pci": pci,
                    "namespace": old.namespace,
                    "pod": old.pod,
                },
            )
        self._held = held
        if self._on_held is not None:
            self._on_held(len(held))
        return mark_held(state, held)
