"""One qaic resource as a kubelet Backend: device IDs, Allocate, preferred allocation, pre-start
(what running pods hold, in the qaic policy's terms, is held_socs.py).

This is the only module that knows both sides: it turns SoC state into generic devices and
DeviceSpecs. Device IDs are PCI addresses (stable across restarts and reboots, <= 63 chars);
with shares, `<pci>::<n>` replicas.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from ..kubelet.after_reply import after_reply
from ..kubelet.checkpoint import IssuedAllocations
from ..kubelet.feed import Feed
from ..kubelet.types import (
    ContainerAllocation,
    Device,
    DeviceSpec,
    PluginOptions,
    Refusal,
    RefusalKind,
)
from ..qaic.cdi import cdi_device_name
from ..qaic.inventory import SocState
from ..qaic.resources import VISIBLE_DEVICES_ENV, device_ids, soc_of
from ..qaic.topology import (
    MultiSocPolicy,
    Placement,
    cards_spanned,
    preferred_allocation,
    spread_replicas,
)

log = logging.getLogger(__name__)

class QaicResource:
    def __init__(
        self,
        resource_name: str,
        *,
        shares: int = 1,
        multi_soc_policy: MultiSocPolicy = MultiSocPolicy.PREFER,
        prestart_check: bool = False,
        recheck: Callable[[], Awaitable[dict[str, SocState]]] | None = None,
        on_cross_card: Callable[[str, str], None] | None = None,  # (resource, rpc)
        on_allocate: Callable[[str, int], None] | None = None,  # (resource, SoCs)
        cdi: bool = False,
        issued: IssuedAllocations | None = None,
    ) -> None:
        """`recheck`: the node's SoCs as of now (PreStartContainer; with `prestart_check` it
        includes a fresh qaic-util Status). `issued`: what kubelet holds from Allocate."""
        self._name = resource_name
        self._shares = shares
        self._policy = multi_soc_policy
        # PreStartContainer is always asked for: a restarted container gets kubelet's
        # checkpointed Allocate reply, whose device node may belong to another SoC by now.
        self._options = PluginOptions(
            pre_start_required=True, get_preferred_allocation_available=True
        )
        self._prestart_check = prestart_check
        self._issued = issued
        self._recheck = recheck
        self._on_cross_card = on_cross_card
        self._on_allocate = on_allocate
        self._cdi = cdi
        self._devices: Feed[tuple[Device, ...]] = Feed(())
        self._socs: dict[str, SocState] = {}
        self._placements: tuple[Placement, ...] = ()

    @property
    def resource_name(self) -> str:
        return self._name

    @property
    def options(self) -> PluginOptions:
        return self._options

    @property
    def devices(self) -> Feed[tuple[Device, ...]]:
        return self._devices

    @property
    def socs(self) -> dict[str, SocState]:
        return self._socs

    async def update(self, socs: Sequence[SocState]) -> None:
        """Publish a new snapshot (a no-op for kubelet when nothing changed)."""
        self._socs = {s.soc.pci_address: s for s in socs}
        devices: list[Device] = []
        placements: list[Placement] = []
        for s in sorted(socs, key=lambda s: s.soc.pci_address):
            numa = (s.soc.numa_node,) if s.soc.numa_node is not None else ()
            for did in device_ids(s.soc.pci_address, self._shares):
                devices.append(Device(did, s.healthy, numa))
                placements.append(Placement(did, s.soc.pci_address, s.soc.card_id, s.soc.numa_node))
        self._placements = tuple(placements)
        await self._devices.publish(tuple(devices))

    async def close(self) -> None:
        await self._devices.close()

    # -- kubelet calls -----------------------------------------------------------------------

    def _resolve(
        self, ids: Sequence[str], socs: dict[str, SocState], *, health: bool = True
    ) -> list[SocState]:
        """Map device IDs to distinct SoCs; refuse unknown (or, with `health`, unhealthy)
        ones, all or nothing."""
        chosen: dict[str, SocState] = {}
        for did in ids:
            pci = soc_of(did)
            state = socs.get(pci)
            if state is None or did not in device_ids(pci, self._shares):
                raise Refusal(
                    RefusalKind.INVALID_ARGUMENT,
                    f"unknown device {did!r} for resource {self._name}",
                )
            if health and not state.healthy:
                why = "; ".join(f.detail for f in state.findings)
                raise Refusal(
                    RefusalKind.FAILED_PRECONDITION,
                    f"device {did!r} ({state.soc.accel_name}) is unhealthy: {why}",
                )
            chosen[pci] = state
        return [chosen[p] for p in sorted(chosen)]

    async def allocate(self, requests: Sequence[Sequence[str]]) -> list[ContainerAllocation]:
        """The replies; the `allocate` log line and the metrics follow once the reply is sent
        (kubelet/after_reply.py), so they never delay kubelet (issue 11)."""
        resolved = [self._resolve(ids, self._socs) for ids in requests]
        out: list[ContainerAllocation] = []
        for ids, socs in zip(requests, resolved, strict=True):
            cards = sorted({s.soc.card_id for s in socs})
            if len(cards) > 1 and self._shares == 1:
                if self._policy is MultiSocPolicy.REQUIRE:
                    raise Refusal(
                        RefusalKind.FAILED_PRECONDITION,
                        f"{len(socs)} SoCs span cards {', '.join(cards)}; "
                        "QAIC_MULTI_SOC_POLICY=require needs them on one card",
                    )
                log.warning(
                    "multi-SoC allocation spans cards",
                    extra={"event": "cross_card", "resource": self._name, "cards": cards},
                )
                if self._on_cross_card is not None:
                    self._on_cross_card(self._name, "allocate")
            elif len(socs) > 1 and self._shares == 1 and not all(s.soc.card_certain for s in socs):
                self._unproven_card(socs)
            paths = [f"/dev/{s.soc.dev_relpath}" for s in socs]
            qids = ",".join(str(q) for q in sorted(s.soc.qid for s in socs))
            after_reply(self._log_allocated, list(ids), paths, qids)
            alloc = ContainerAllocation(
                devices=[DeviceSpec(p, p, "rw") for p in paths],
                envs={VISIBLE_DEVICES_ENV: qids},
                cdi_devices=[cdi_device_name(s.soc.pci_address) for s in socs] if self._cdi else [],
            )
            if self._issued is not None:
                self._issued.record(self._name, ids, alloc)
            out.append(alloc)
        if self._on_allocate is not None:
            for socs in resolved:
                after_reply(self._on_allocate, self._name, len(socs))
        return out

    def _log_allocated(self, ids: list[str], paths: list[str], qids: str) -> None:
        log.info(
            "allocated",
            extra={
                "event": "allocate",
                "resource": self._name,
                "devices": ids,
                "dev_paths": paths,
                VISIBLE_DEVICES_ENV: qids,
            },
        )

    def _unproven_card(self, socs: Sequence[SocState]) -> None:
        """A multi-SoC set on one card that only PCIe topology vouches for: it may as well be
        single-SoC cards behind a server-board switch, so it counts as cross-card; `require`
        refuses it rather than promise a card nobody proved."""
        card = socs[0].soc.card_id
        if self._on_cross_card is not None:
            self._on_cross_card(self._name, "allocate")
        if self._policy is MultiSocPolicy.REQUIRE:
            raise Refusal(
                RefusalKind.FAILED_PRECONDITION,
                f"{len(socs)} SoCs share card {card} only by PCIe topology, with no firmware "
                "evidence that it is one multi-SoC card (it may be single-SoC cards behind a "
                "server-board PCIe switch); QAIC_MULTI_SOC_POLICY=require needs proof: make "
                "the host's qaic-util available to the plugin (mount /opt/qti-aic) or name "
                "these SoCs' SKU in QAIC_SKU_OVERRIDES",
            )
        log.warning(
            "multi-SoC allocation on a card known only from PCIe topology",
            extra={
                "event": "unproven_card",
                "resource": self._name,
                "card": card,
                "socs": [s.soc.pci_address for s in socs],
            },
        )

    async def preferred_allocation(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        pick = spread_replicas if self._shares > 1 else preferred_allocation
        result = pick(self._placements, available, must_include, size)
        if size > 1 and self._shares == 1:
            spanned = cards_spanned(self._placements, result)
            if len(spanned) > 1 and self._on_cross_card is not None:
                self._on_cross_card(self._name, "preferred")
        return result

    async def pre_start(self, device_ids: Sequence[str]) -> None:
        """Right before every container start: refuse a device node that no longer belongs to
        its SoC (after a driver reload kubelet would hand a restarted container another
        SoC's node), and with `prestart_check` a SoC that went bad."""
        socs = await self._recheck() if self._recheck is not None else self._socs
        chosen = self._resolve(
            device_ids,
            {p: s for p, s in socs.items() if p in self._socs},
            health=self._prestart_check,
        )
        if self._issued is not None:
            self._check_nodes(self._issued, device_ids, chosen)

    def _check_nodes(
        self, known: IssuedAllocations, device_ids: Sequence[str], socs: Sequence[SocState]
    ) -> None:
        issued = known.lookup(self._name, device_ids)
        if not issued.allocations:
            log.warning(
                "no Allocate reply known for these devices; device nodes not checked",
                extra={
                    "event": "prestart_unchecked",
                    "resource": self._name,
                    "devices": list(device_ids),
                },
            )
            return
        now = sorted(f"/dev/{s.soc.dev_relpath}" for s in socs)
        for alloc in issued.allocations:
            given = sorted(d.host_path for d in alloc.devices)
            if given != now:
                pcis = ", ".join(s.soc.pci_address for s in socs)
                raise Refusal(
                    RefusalKind.FAILED_PRECONDITION,
                    f"the device node of SoC {pcis} changed since allocation (the driver was "
                    f"reloaded or the SoC re-probed): the container was given "
                    f"{', '.join(given)}, the SoC is now {', '.join(now)}; delete and recreate "
                    "the pod to get its current device node",
                )
