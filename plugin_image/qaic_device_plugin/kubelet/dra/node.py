"""NodePrepareResources / NodeUnprepareResources semantics, idempotent and checkpointed.

A claim already in the checkpoint is answered from it without touching the driver again (kubelet
re-sends prepare after its own restarts); unprepare of an unknown claim still asks the driver to
clean up by UID and then succeeds. Calls are serialised: kubelet may send them concurrently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from .checkpoint import Checkpoint
from .types import ClaimRef, ClaimSource, DraDriver, PreparedClaim, PreparedDevice, PrepareError

log = logging.getLogger(__name__)


class NodeService:
    def __init__(self, driver: DraDriver, claims: ClaimSource, checkpoint: Checkpoint) -> None:
        self._driver = driver
        self._claims = claims
        self._checkpoint = checkpoint
        self._lock = asyncio.Lock()

    @property
    def prepared(self) -> dict[str, PreparedClaim]:
        return dict(self._checkpoint.claims)

    async def prepare(
        self, refs: Sequence[ClaimRef]
    ) -> dict[str, tuple[PreparedDevice, ...] | str]:
        """Per claim UID: its devices, or an error text (kubelet retries that claim)."""
        out: dict[str, tuple[PreparedDevice, ...] | str] = {}
        async with self._lock:
            for ref in refs:
                done = self._checkpoint.claims.get(ref.uid)
                if done is not None:
                    out[ref.uid] = done.devices
                    continue
                try:
                    allocated = await self._claims.get(ref)
                    devices = tuple(await self._driver.prepare(allocated))
                    self._checkpoint.claims[ref.uid] = PreparedClaim(ref, devices)
                    self._checkpoint.save()
                except (PrepareError, OSError) as e:
                    self._checkpoint.claims.pop(ref.uid, None)
                    out[ref.uid] = f"prepare {ref.namespace}/{ref.name}: {e}"
                    log.warning(
                        "claim not prepared",
                        extra={"event": "dra_prepare_failed", "claim": ref.uid, "error": str(e)},
                    )
                    continue
                out[ref.uid] = devices
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
        return out

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
