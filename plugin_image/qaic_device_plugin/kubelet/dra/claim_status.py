"""A driver's entries in `ResourceClaim.status.devices` (DRAResourceClaimDeviceStatus, GA in
1.37): what each prepared device is, as the driver knows it, so `kubectl describe
resourceclaim` answers "which hardware did I get" without a node login.

How the API wants it written:
- the `status` subresource, by server-side apply with the driver's name as field manager: the
  list is a map keyed by (driver, pool, device, shareID), so each driver owns its own entries
  and never touches another's (a JSON merge patch would replace the whole list);
- entries only for devices allocated in the claim (else 422 "must be an allocated device in
  the claim"), `data` a JSON object of at most 10 KiB, at most 8 conditions, each with type,
  status, reason (CamelCase), message and lastTransitionTime;
- the claim's UID in the applied object: a claim replaced under the same name is refused
  (metadata.uid is immutable), never written to;
- RBAC: `patch` on `resourceclaims/status`, and (DRAResourceClaimGranularStatusAuthorization,
  beta and on since 1.36) `associated-node:patch` on the synthetic `resourceclaims/driver`
  with the driver's name as resourceName: the API server allows it only when the writer is a
  service account whose token is bound to a pod on the claim's node
  (pkg/registry/resource/utils.go, AuthorizedForDeviceStatus).

When: the owner of the entries calls `want()` after a prepare and whenever what it reports
changes (health); writes happen in `run()`, off the prepare path, so NodePrepareResources
never waits for the API server. Only a change is written; a condition keeps its
lastTransitionTime while its status stays (seeded from the stored claim the first time, so a
restarted driver does not reset it). Unprepare leaves the entries: the API server removes them
itself when the claim is deallocated (resourceclaim strategy, dropDeallocatedStatusDevices),
as it does for drivers that never clear them. A claim that is gone, replaced or deallocated
(404, 409, 422) is dropped; an unreachable or failing server is retried with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.resources.resource_v1 import ResourceClaim
from lightkube.types import PatchType

from .types import ClaimRef

log = logging.getLogger(__name__)

DATA_MAX_BYTES = 10 * 1024  # AllocatedDeviceStatusDataMaxLength
MAX_CONDITIONS = 8  # AllocatedDeviceStatusMaxConditions
RETRY_SECONDS = (0.5, 30.0)
#: Answers after which writing again cannot help: the claim is gone (404), replaced (409, or
#: 422 for the immutable UID), no longer allocated, or the per-driver permission on
#: `resourceclaims/driver` is missing (422 too: a validation error, "is forbidden"). A plain
#: 403 (no `patch` on resourceclaims/status) is retried: RBAC may arrive late.
GIVE_UP = frozenset({404, 409, 422})

Json = dict[str, Any]
#: (pool, device, shareID, condition type) -> (status, lastTransitionTime)
Times = dict[tuple[str, str, str, str], tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    ok: bool
    reason: str  # CamelCase, as metav1.Condition requires
    message: str = ""


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One of the driver's entries: the allocated device (with its shareID, if shared)."""

    pool: str
    device: str
    share_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    conditions: tuple[Condition, ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.pool, self.device, self.share_id or "")


TIME = "%Y-%m-%dT%H:%M:%SZ"  # metav1.Time: RFC 3339, seconds


def _by_key(entries: Sequence[Json]) -> dict[tuple[str, str, str], Json]:
    return {(e["pool"], e["device"], e.get("shareID") or ""): e for e in entries}


def _now() -> str:
    return datetime.now(UTC).strftime(TIME)


class ClaimStatusWriter:
    def __init__(self, client: AsyncClient, driver: str) -> None:
        self._client = client
        self._driver = driver
        self._wanted: dict[str, tuple[ClaimRef, tuple[DeviceStatus, ...]]] = {}
        self._written: dict[str, tuple[DeviceStatus, ...]] = {}
        #: Per claim: (pool, device, shareID, condition type) -> (status, lastTransitionTime).
        self._times: dict[str, Times] = {}
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self.writes = 0  # successful writes (tests and metrics read it)

    def want(self, ref: ClaimRef, devices: Sequence[DeviceStatus]) -> None:
        """The entries `ref` should carry; written by run() unless already written."""
        entries = tuple(sorted(devices, key=lambda d: d.key))
        self._wanted[ref.uid] = (ref, entries)
        if self._written.get(ref.uid) != entries:
            self._pending.add(ref.uid)
            self._wake.set()

    def forget(self, uid: str) -> None:
        """The claim was unprepared: nothing more to write for it."""
        for d in (self._wanted, self._written, self._times):
            d.pop(uid, None)
        self._pending.discard(uid)

    async def run(self) -> None:
        delay = RETRY_SECONDS[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = False
            for uid in sorted(self._pending):
                self._pending.discard(uid)
                if uid not in self._wanted:
                    continue
                if not await self._write(*self._wanted[uid]):
                    self._pending.add(uid)
                    failed = True
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_SECONDS[1])
                self._wake.set()
            else:
                delay = RETRY_SECONDS[0]

    async def _write(self, ref: ClaimRef, entries: tuple[DeviceStatus, ...]) -> bool:
        """Apply the entries; True when done (written, or hopeless and dropped)."""
        try:
            stored = None
            if ref.uid not in self._times:
                stored = await self._stored(ref)
            body = self._body(ref, entries)
            if stored is not None and _by_key(stored) == _by_key(body["status"]["devices"]):
                self._written[ref.uid] = entries  # a previous process wrote just this
                return True
            await self._client.patch(
                ResourceClaim.Status, ref.name, body, namespace=ref.namespace,
                patch_type=PatchType.APPLY, field_manager=self._driver, force=True,
            )
        except ApiError as e:
            code = e.status.code or 0
            if code not in GIVE_UP:
                return self._failed(ref, f"{code} {e.status.message}", retry=True)
            self._wanted.pop(ref.uid, None)
            self._failed(ref, f"{code} {e.status.message}", retry=False)
            return True
        except httpx2.HTTPError as e:
            return self._failed(ref, str(e), retry=True)
        except ValueError as e:  # the claim replaced, or data over the API's limit
            self._wanted.pop(ref.uid, None)
            self._failed(ref, str(e), retry=False)
            return True
        self._written[ref.uid] = entries
        self.writes += 1
        log.info("claim status written", extra={
            "event": "dra_claim_status", "claim": ref.uid, "namespace": ref.namespace,
            "claim_name": ref.name, "devices": [d.device for d in entries]})
        return True

    @staticmethod
    def _failed(ref: ClaimRef, why: str, *, retry: bool) -> bool:
        log.warning("claim status not written" + ("; retrying" if retry else ""), extra={
            "event": "dra_claim_status_failed", "claim": ref.uid, "error": why, "retry": retry})
        return False

    async def _stored(self, ref: ClaimRef) -> list[Json]:
        """Our entries as the server holds them (a previous process may have written them):
        their conditions' lastTransitionTime survives a restart, and an equal status is not
        written again."""
        claim = await self._client.get(ResourceClaim, ref.name, namespace=ref.namespace)
        if claim.metadata is None or claim.metadata.uid != ref.uid:
            raise ValueError(f"claim replaced (UID {claim.metadata and claim.metadata.uid})")
        raw = claim.to_dict().get("status", {}).get("devices") or []
        ours = [d for d in raw if d.get("driver") == self._driver]
        times = self._times.setdefault(ref.uid, {})
        for d in ours:
            for c in d.get("conditions") or ():
                key = (d["pool"], d["device"], d.get("shareID") or "", c["type"])
                times[key] = (c["status"], str(c["lastTransitionTime"]))
        return ours

    def _body(self, ref: ClaimRef, entries: tuple[DeviceStatus, ...]) -> Json:
        times = self._times.setdefault(ref.uid, {})
        devices = []
        for d in entries:
            data = json.dumps(dict(d.data), separators=(",", ":"))
            if len(data.encode()) > DATA_MAX_BYTES:
                raise ValueError(f"status data of {d.device} is {len(data)} bytes, over 10 KiB")
            conditions = []
            for c in d.conditions[:MAX_CONDITIONS]:
                status = "True" if c.ok else "False"
                key = (*d.key, c.type)
                old = times.get(key)
                since = old[1] if old is not None and old[0] == status else _now()
                times[key] = (status, since)
                conditions.append({"type": c.type, "status": status, "reason": c.reason,
                                   "message": c.message, "lastTransitionTime": since})
            entry: Json = {"driver": self._driver, "pool": d.pool, "device": d.device,
                           "data": dict(d.data), "conditions": conditions}
            if d.share_id is not None:
                entry["shareID"] = d.share_id
            devices.append(entry)
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                "metadata": {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
                "status": {"devices": devices}}
