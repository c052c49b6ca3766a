"""Read a ResourceClaim's allocation from the API server, as kubeletplugin's helper does.

kubelet sends only (namespace, name, UID). The claim must exist, carry that UID (not a
replacement of the same name) and be allocated; of its results we keep our driver's, with what
the scheduler decided for each that the driver must honour too: adminAccess and the taints the
allocation tolerates.
"""

from __future__ import annotations

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.models.resource_v1 import DeviceToleration
from lightkube.resources.resource_v1 import ResourceClaim

from .types import AllocatedClaim, AllocatedDevice, ClaimRef, PrepareError, Toleration


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
            AllocatedDevice(
                r.request,
                r.pool,
                r.device,
                r.shareID,
                admin_access=bool(r.adminAccess),
                tolerations=tuple(_toleration(t) for t in r.tolerations or ()),
            )
            for r in results or ()
            if r.driver == self._driver
        )
        return AllocatedClaim(ref, devices)


def _toleration(t: DeviceToleration) -> Toleration:
    return Toleration(t.key or "", t.operator or "Equal", t.value or "", t.effect or "")
