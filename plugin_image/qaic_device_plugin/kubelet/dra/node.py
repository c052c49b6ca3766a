"""NodePrepareResources / NodeUnprepareResources semantics, idempotent and checkpointed.

A claim already in the checkpoint keeps its devices, but the driver prepares them again: kubelet
keeps "prepared" in memory only, so it sends prepare again after a node reboot (and after its
own restart, for a pod that needs a new sandbox), and by then node-local state may be gone or
stale: CDI specs live on a tmpfs (/var/run/cdi), device node numbers are handed out again by
an asynchronous probe. Answering from the checkpoint alone named CDI devices that no longer
existed, and the runtime refused every container of the claim (kubernetes/kubernetes#141433,
fixed in dra-example-driver the same way). The claim's allocation comes from the checkpoint
then, not the API server: same devices, same answer.

Last line of defence: a piece of hardware is never prepared for two claims at once unless
both allocations allow it (adminAccess on either, or shares of consumable capacity on both).
Hardware, not device names: the driver says which units each device uses (DraDriver.units),
since a whole card and one of its SoCs are different devices on the same SoC. The scheduler
should never allocate so; if it happens (a stale checkpoint entry, a bug elsewhere) the
error names both claims and devices instead of two pods silently sharing a SoC.

Unprepare of an unknown claim still asks the driver to clean up by UID and then succeeds.
Calls are serialised: kubelet may send them concurrently.

Node-local state can also go stale while the node stays up: the accelerator driver reloaded or
a SoC re-probed gives it another device node, and kubelet sends no prepare then (it does so
only for a new pod sandbox), so a restarting container would be handed the old node from the
CDI spec. `prepare_again_holding` re-runs the driver for the prepared claims that hold the
devices the driver says changed.

Listeners (`on_prepared`, `on_unprepared`) hear of every claim prepared (also again) and
unprepared, e.g. to report it in the claim's status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import TypeVar

from .checkpoint import Checkpoint
from .types import (
    AllocatedClaim,
    ClaimRef,
    ClaimSource,
    DraDriver,
    PreparedClaim,
    PreparedDevice,
    PrepareError,
    Toleration,
)

log = logging.getLogger(__name__)

Outcome = tuple[PreparedDevice, ...] | str  # the devices, or an error text (kubelet retries)
_T = TypeVar("_T")


def _name(ref: ClaimRef) -> str:
    return f"{ref.namespace}/{ref.name}"


class NodeService:
    def __init__(self, driver: DraDriver, claims: ClaimSource, checkpoint: Checkpoint) -> None:
        self._driver = driver
        self._claims = claims
        self._checkpoint = checkpoint
        self._lock = asyncio.Lock()
        self.on_prepared: list[Callable[[PreparedClaim], None]] = []
        self.on_unprepared: list[Callable[[ClaimRef], None]] = []

    @property
    def prepared(self) -> dict[str, PreparedClaim]:
        return dict(self._checkpoint.claims)

    async def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, Outcome]:
        """Per claim UID: its devices, or an error text (kubelet retries that claim)."""
        out: dict[str, Outcome] = {}
        async with self._lock:
            for ref in refs:
                done = self._checkpoint.claims.get(ref.uid)
                if done is not None:
                    out[ref.uid] = await self._prepare_again(done)
                else:
                    out[ref.uid] = await self._prepare_new(ref)
        return out

    async def _prepare_new(self, ref: ClaimRef) -> Outcome:
        try:
            allocated = await self._claims.get(ref)
            self._check_not_held(allocated)
            devices = tuple(await self._driver.prepare(allocated))
            self._checkpoint.claims[ref.uid] = PreparedClaim(ref, devices, allocated.devices)
            self._checkpoint.save()
        except (PrepareError, OSError) as e:
            self._checkpoint.claims.pop(ref.uid, None)
            return self._failed(ref, e)
        self._tell(self.on_prepared, self._checkpoint.claims[ref.uid])
        log.info(
            "claim prepared",
            extra={
                "event": "dra_prepared",
                "claim": ref.uid,
                "namespace": ref.namespace,
                "claim_name": ref.name,
                "devices": [d.device for d in devices],
            },
        )
        return devices

    async def _prepare_again(self, done: PreparedClaim, keep_in_use: bool = False) -> Outcome:
        """The driver prepares the checkpointed allocation again; the entry stays either way
        (unprepare still needs it), and is rewritten only if the answer changed.
        `keep_in_use`: every taint is tolerated (the claim was admitted already)."""
        ref = done.ref
        allocation = done.allocation()
        if keep_in_use:
            anything = (Toleration(operator="Exists"),)
            allocation = AllocatedClaim(ref, tuple(
                replace(d, tolerations=d.tolerations + anything) for d in allocation.devices))
        try:
            devices = tuple(await self._driver.prepare(allocation))
            if devices != done.devices:
                self._checkpoint.claims[ref.uid] = PreparedClaim(ref, devices, done.allocated)
                self._checkpoint.save()
        except (PrepareError, OSError) as e:
            return self._failed(ref, e)
        self._tell(self.on_prepared, self._checkpoint.claims[ref.uid])
        log.info(
            "prepared claim prepared again",
            extra={
                "event": "dra_reprepared",
                "claim": ref.uid,
                "devices": [d.device for d in devices],
                "changed": devices != done.devices,
            },
        )
        return devices

    async def prepare_again_holding(self, pool: str, devices: Collection[str],
                                    ) -> dict[str, Outcome]:
        """Prepare again every prepared claim holding one of `devices` of `pool` (their
        node-local state changed, say the driver), as kubelet's own prepare-again does, but
        without judging the devices' health again: the claim is in use, and its spec should
        name the hardware as it is now either way (kubelet asks nobody before a container
        restart). Per claim UID: its devices, or why it could not be done."""
        out: dict[str, Outcome] = {}
        async with self._lock:
            for uid, done in list(self._checkpoint.claims.items()):
                if any(d.pool == pool and d.device in devices
                       for d in done.allocation().devices):
                    out[uid] = await self._prepare_again(done, keep_in_use=True)
        return out

    @staticmethod
    def _tell(listeners: Sequence[Callable[[_T], None]], what: _T) -> None:
        for listener in listeners:
            try:
                listener(what)
            except Exception:  # a listener's bug must not fail the claim kubelet waits for
                log.exception("listener failed", extra={"event": "dra_listener_failed"})

    def _check_not_held(self, claim: AllocatedClaim) -> None:
        """Refuse hardware that another prepared claim holds, unless both may share it."""
        wanted = {(d.pool, unit): d for d in claim.devices for unit in self._driver.units(d.device)}
        for uid, other in self._checkpoint.claims.items():
            if uid == claim.ref.uid:
                continue
            for d in other.allocation().devices:
                for unit in sorted(self._driver.units(d.device)):
                    mine = wanted.get((d.pool, unit))
                    if mine is None or mine.coexists_with(d):
                        continue
                    what = f"device {d.pool}/{mine.device}"
                    if mine.device != d.device:  # overlapping devices (a card and its SoC)
                        what += f" uses {unit}, which"
                        held = f" (in its device {d.pool}/{d.device})"
                    else:
                        held = ""
                    raise PrepareError(
                        f"{what} is already prepared for claim {_name(other.ref)} (UID {uid})"
                        f"{held}; it cannot be given to claim {_name(claim.ref)} as well. Both "
                        f"were allocated the same hardware: unprepare or delete the pod of one "
                        f"of them"
                    )

    @staticmethod
    def _failed(ref: ClaimRef, e: Exception) -> str:
        log.warning(
            "claim not prepared",
            extra={"event": "dra_prepare_failed", "claim": ref.uid, "error": str(e)},
        )
        return f"prepare {_name(ref)}: {e}"

    async def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        async with self._lock:
            for ref in refs:
                known = self._checkpoint.claims.get(ref.uid)
                try:
                    await self._driver.unprepare(ref, known.devices if known else ())
                    if known is not None:
                        del self._checkpoint.claims[ref.uid]
                        self._checkpoint.save()
                except (PrepareError, OSError) as e:
                    out[ref.uid] = f"unprepare {ref.namespace}/{ref.name}: {e}"
                    continue
                out[ref.uid] = None
                self._tell(self.on_unprepared, ref)
                log.info(
                    "claim unprepared",
                    extra={"event": "dra_unprepared", "claim": ref.uid, "known": bool(known)},
                )
        return out
