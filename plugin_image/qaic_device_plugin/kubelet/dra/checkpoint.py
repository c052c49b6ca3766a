"""Prepared claims on disk, so a restarted plugin still knows (and can unprepare) them.

One JSON file, written atomically (temp file, fsync, rename, fsync of the directory) after
every change and before kubelet hears the answer. A file that cannot be read, or has another
version, is logged and set aside (`.bad`), never fatal: kubelet re-sends prepare for claims
that still matter, and prepare is idempotent.

Each claim also keeps the allocation it was prepared from (`allocated`: request, pool,
device, shareID, adminAccess, tolerations), so a prepare sent again after a reboot re-runs the
driver for the same devices without the API server. The field is optional (version 1 still):
files written before it existed load, and their claims are rebuilt from `devices`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from .types import AllocatedDevice, ClaimRef, PreparedClaim, PreparedDevice, Toleration

log = logging.getLogger(__name__)

VERSION = 1


def _encode_allocated(d: AllocatedDevice) -> dict[str, Any]:
    out: dict[str, Any] = {"request": d.request, "pool": d.pool, "device": d.device}
    if d.share_id is not None:
        out["shareID"] = d.share_id
    if d.admin_access:
        out["adminAccess"] = True
    if d.tolerations:
        out["tolerations"] = [
            {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}
            for t in d.tolerations
        ]
    return out


def _decode_allocated(d: dict[str, Any]) -> AllocatedDevice:
    return AllocatedDevice(
        request=str(d["request"]),
        pool=str(d["pool"]),
        device=str(d["device"]),
        share_id=d.get("shareID"),
        admin_access=bool(d.get("adminAccess", False)),
        tolerations=tuple(
            Toleration(str(t["key"]), str(t["operator"]), str(t["value"]), str(t["effect"]))
            for t in d.get("tolerations", ())
        ),
    )


def _encode(c: PreparedClaim) -> dict[str, Any]:
    return {
        "namespace": c.ref.namespace,
        "name": c.ref.name,
        "devices": [
            {
                "requests": list(d.requests),
                "pool": d.pool,
                "device": d.device,
                "cdiDeviceIDs": list(d.cdi_ids),
                **({"shareID": d.share_id} if d.share_id is not None else {}),
            }
            for d in c.devices
        ],
        "allocated": [_encode_allocated(d) for d in c.allocated],
    }


def _decode(uid: str, raw: dict[str, Any]) -> PreparedClaim:
    devices = tuple(
        PreparedDevice(
            requests=tuple(str(r) for r in d["requests"]),
            pool=str(d["pool"]),
            device=str(d["device"]),
            cdi_ids=tuple(str(i) for i in d["cdiDeviceIDs"]),
            share_id=d.get("shareID"),
        )
        for d in raw["devices"]
    )
    allocated = tuple(_decode_allocated(d) for d in raw.get("allocated", ()))
    return PreparedClaim(
        ClaimRef(str(raw["namespace"]), uid, str(raw["name"])), devices, allocated
    )


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.claims: dict[str, PreparedClaim] = {}

    def load(self) -> None:
        """Read the file if there is one; a bad file is logged and set aside."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as e:
            self._set_aside(f"unreadable: {e.strerror}")
            return
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ValueError(f"version {doc.get('version') if isinstance(doc, dict) else '?'}")
            self.claims = {uid: _decode(uid, raw) for uid, raw in doc["claims"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.claims = {}
            self._set_aside(f"corrupt: {e}")
            return
        log.info(
            "prepared claims restored",
            extra={"event": "dra_checkpoint_loaded", "claims": sorted(self.claims)},
        )

    def _set_aside(self, reason: str) -> None:
        bad = self.path.with_name(self.path.name + ".bad")
        try:
            os.replace(self.path, bad)
        except OSError:
            bad = self.path
        log.error(
            "checkpoint ignored; starting with no prepared claims",
            extra={"event": "dra_checkpoint_bad", "path": str(bad), "reason": reason},
        )

    def save(self) -> None:
        """Atomically replace the file; raises OSError (the RPC then reports the failure)."""
        doc = {"version": VERSION, "claims": {u: _encode(c) for u, c in self.claims.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
