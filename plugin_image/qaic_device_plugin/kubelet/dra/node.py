"""NodePrepareResources / NodeUnprepareResources semantics, idempotent and checkpointed.

A claim already in the checkpoint keeps its devices, but the driver prepares them again: kubelet
keeps "prepared" in memory only, so it sends prepare again after a node reboot (and after its
own restart, for a pod that needs a new sandbox), and by then node-local state may be gone or
stale: CDI specs live on a tmpfs (/var/run/cdi), device node numbers are handed out again by
an asynchronous probe. Answering from the checkpoint alone named CDI devices that no longer
existed, and the runtime refused every container of the claim (kubernetes/kubernetes#141433,
fixed in dra-example-driver the same way). The claim's allocation comes from the checkpoint
then, not the API server: same devices, same answer.

Last line of defence: a device is never prepared for two claims at once unless both
allocations allow it (adminAccess, or a shareID from consumable capacity). The scheduler
should never allocate so; if it happens (a stale checkpoint entry, a bug elsewhere) the
error names both claims instead of two pods silently sharing a SoC.

Unprepare of an unknown claim still asks the driver to clean up by UID and then succeeds.
Calls are serialised: kubelet may send them concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from .checkpoint import Checkpoint
from .types import (
    AllocatedClaim,
    ClaimRef,
    ClaimSource,
    DraDriver,
    PreparedClaim,
    PreparedDevice,
    PrepareError,
)

log = logging.getLogger(__name__)

Outcome = tuple[PreparedDevice, ...] | str  # the devices, or an error text (kubelet retries)


def _name(ref: ClaimRef) -> str:
    return f"{ref.namespace}/{ref.name}"


class NodeService:
    def __init__(self, driver: DraDriver, claims: ClaimSource, checkpoint: Checkpoint) -> None:
        self._driver = driver
        self._claims = claims
        self._checkpoint = checkpoint
        self._lock = asyncio.Lock()

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

    async def _prepare_again(self, done: PreparedClaim) -> Outcome:
        """The driver prepares the checkpointed allocation again; the entry stays either way
        (unprepare still needs it), and is rewritten only if the answer changed."""
        ref = done.ref
        try:
            devices = tuple(await self._driver.prepare(done.allocation()))
            if devices != done.devices:
                self._checkpoint.claims[ref.uid] = PreparedClaim(ref, devices, done.allocated)
                self._checkpoint.save()
        except (PrepareError, OSError) as e:
            return self._failed(ref, e)
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

    def _check_not_held(self, claim: AllocatedClaim) -> None:
        """Refuse a device that another prepared claim holds, unless both may share it."""
        wanted = {(d.pool, d.device) for d in claim.devices if d.exclusive}
        for uid, other in self._checkpoint.claims.items():
            if uid == claim.ref.uid:
                continue
            for d in other.allocation().devices:
                if d.exclusive and (d.pool, d.device) in wanted:
                    raise PrepareError(
                        f"device {d.pool}/{d.device} is already prepared for claim "
                        f"{_name(other.ref)} (UID {uid}); it cannot be given to claim "
                        f"{_name(claim.ref)} as well. Both were allocated the same device: "
                        f"unprepare or delete the pod of one of them"
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
                log.info(
                    "claim unprepared",
                    extra={"event": "dra_unprepared", "claim": ref.uid, "known": bool(known)},
                )
        return out
