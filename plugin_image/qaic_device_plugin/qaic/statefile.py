"""What the plugin learned that must survive its own restart: RAS cool-downs and learned SKUs.

Without it a restarted plugin would take a SoC still in cool-down for healthy (its first
`ue_count` reading is only a baseline) and, while qaic-util cannot answer, offer a Pro card
as a guessed Std. Kubelet deletes every non-directory file in the device-plugin dir when it
restarts, so the default file lives in a subdirectory (`<plugin dir>/qaic/state.json`).
Written atomically (temp file + rename), versioned. A file that cannot be read or parsed is
logged and ignored: it is a cache of evidence, never a reason not to start. Cool-down ends
are stored as wall-clock time, because the monotonic clock restarts with the node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .inventory import Inventory
from .model import Sku, SkuDecision, SkuSource

log = logging.getLogger(__name__)

STATE_DIR = "qaic"
STATE_NAME = "state.json"
VERSION = 1
_READ_LIMIT = 1 << 20  # a node has at most a few hundred SoCs: far below this


def default_state_file(device_plugin_dir: Path) -> Path:
    return device_plugin_dir / STATE_DIR / STATE_NAME


class _LearnedSku(BaseModel):
    model_config = ConfigDict(frozen=True)
    sku: Sku
    source: SkuSource


class _StateV1(BaseModel):
    model_config = ConfigDict(frozen=True)
    version: Literal[1] = 1
    ras_cooldown_until: dict[str, float] = {}  # PCI address -> Unix time
    skus: dict[str, _LearnedSku] = {}


class StateFile:
    """Keeps `inventory`'s cool-downs and learned SKUs in `path`; `clock` is the inventory's
    (monotonic) clock, `wall_clock` the one stored."""

    def __init__(
        self,
        path: Path,
        inventory: Inventory,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._inventory = inventory
        self._clock = clock
        self._wall = wall_clock
        self._last: tuple[dict[str, float], dict[str, SkuDecision]] = ({}, {})

    def _read(self) -> _StateV1 | None:
        try:
            with open(self.path, "rb") as f:
                data = f.read(_READ_LIMIT)
        except FileNotFoundError:
            return None
        except OSError as e:
            self._ignored(e.strerror or str(e))
            return None
        try:
            return _StateV1.model_validate_json(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "file"
            self._ignored(f"{where}: {first['msg']}")
            return None

    def _ignored(self, reason: str) -> None:
        log.warning(
            "state file unusable; starting without saved cool-downs and SKUs",
            extra={"event": "state_file_ignored", "path": str(self.path), "reason": reason},
        )

    def restore(self) -> None:
        """Load the file into the inventory (cool-downs already over are dropped)."""
        saved = self._read()
        if saved is None:
            return
        offset = self._clock() - self._wall()
        ras = self._inventory.ras
        for pci, until in saved.ras_cooldown_until.items():
            ras.restore_cooldown(pci, until + offset)
        skus = {p: SkuDecision(s.sku, s.source) for p, s in saved.skus.items()}
        self._inventory.restore_skus(skus)
        self._last = (ras.cooldowns(), self._inventory.learned_skus())
        log.info(
            "state restored",
            extra={
                "event": "state_restored",
                "path": str(self.path),
                "cooldowns": sorted(self._last[0]),
                "skus": len(skus),
            },
        )

    def save(self) -> None:
        """Write the file if what it holds changed; a failure is logged, never raised."""
        current = (self._inventory.ras.cooldowns(), self._inventory.learned_skus())
        if current == self._last:
            return
        offset = self._wall() - self._clock()
        state = _StateV1(
            ras_cooldown_until={p: until + offset for p, until in current[0].items()},
            skus={p: _LearnedSku(sku=d.sku, source=d.source) for p, d in current[1].items()},
        )
        try:
            self._write(state.model_dump_json(indent=1).encode())
        except OSError as e:
            log.warning(
                "cannot write the state file",
                extra={"event": "state_file_unwritable", "path": str(self.path), "error": str(e)},
            )
            return
        self._last = current

    def _write(self, data: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
