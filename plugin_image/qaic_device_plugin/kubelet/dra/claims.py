"""Read a ResourceClaim's allocation from the API server, as kubeletplugin's helper does.

kubelet sends only (namespace, name, UID). The claim must exist, carry that UID (not a
replacement of the same name) and be allocated; of its results we keep our driver's.
"""

from __future__ import annotations

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.resources.resource_v1 import ResourceClaim

from .types import AllocatedClaim, AllocatedDevice, ClaimRef, PrepareError


class ApiClaimSource:
    def __init__(self, client: AsyncClient, driver_name: str) -> None:
        self._client = client
        self._driver = driver_name

    async def get(self, ref: ClaimRef) -> AllocatedClaim:
        try:
            claim = await self._client.get(ResourceClaim, ref.name, namespace=ref.namespace)
        except ApiError as e:
            raise PrepareError(f"retrieve claim: {e.status.code} {e.status.message}") from None
        except httpx2.HTTPError as e:
            raise PrepareError(f"retrieve claim: {e}") from None
        uid = claim.metadata.uid if claim.metadata else None
        if uid != ref.uid:
            raise PrepareError(f"claim got replaced (UID {uid}, kubelet asked for {ref.uid})")
        allocation = claim.status.allocation if claim.status else None
        if allocation is None:
            raise PrepareError("claim not allocated")
        results = allocation.devices.results if allocation.devices else None
        devices = tuple(
            AllocatedDevice(r.request, r.pool, r.device, r.shareID)
            for r in results or ()
            if r.driver == self._driver
        )
        return AllocatedClaim(ref, devices)
