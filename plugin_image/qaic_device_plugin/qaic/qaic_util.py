"""Running and reading `qaic-util -q`, the only source of a SoC's SKU and firmware status.

The tool is optional (it ships with the Platform SDK, not the kernel), slow, and can hang on
a wedged device, so every call is bounded and every failure is a `QaicUtilError` the caller
can degrade on, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass

from .model import QaicUtilEntry

log = logging.getLogger(__name__)

DEFAULT_PATH = "/opt/qti-aic/tools/qaic-util"

_QID_RE = re.compile(r"^\s*QID\s+(\d+)\s*$")
_PCI_RE = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_MAX_OUTPUT = 4 * 1024 * 1024  # a node's worth of blocks is a few KiB; anything huge is junk


class QaicUtilError(RuntimeError):
    """qaic-util could not tell us anything (missing, hung, crashed or printed nonsense)."""


class QaicUtilUnusable(QaicUtilError):
    """qaic-util cannot run here at all (exec failed, or the dynamic loader or interpreter gave
    up before its main: a missing shared library), as opposed to one failed run."""


# The dynamic loader exits 127 with this when a shared library is missing; a shebang script
# whose interpreter is missing gets 127 from env(1), and 126 means "found, cannot execute".
_LOADER_FAILURE = "error while loading shared libraries"
_CANNOT_START = (126, 127)


def _entry(qid: int, fields: dict[str, str]) -> QaicUtilEntry | None:
    pci = fields.pop("PCI Address", "").lower()
    status = fields.pop("Status", "")
    if not _PCI_RE.match(pci) or not status:
        return None
    sku_type = fields.pop("Sku Type", None) or None
    dev_link = fields.pop("Dev Link", None) or None
    return QaicUtilEntry(
        qid=qid,
        pci_address=pci,
        status=status,
        sku_type=sku_type,
        dev_link=dev_link,
        extra=fields,
    )


def parse_qaic_util(text: str) -> list[QaicUtilEntry]:
    """Parse `qaic-util -q` output; blocks without a valid PCI Address or Status are dropped.

    Tolerant on purpose: the format is informal and varies between SDK releases, and one bad
    block must not hide the others.
    """
    entries: list[QaicUtilEntry] = []
    seen: set[int] = set()
    qid: int | None = None
    fields: dict[str, str] = {}

    def flush() -> None:
        if qid is None:
            return
        entry = _entry(qid, fields)
        if entry is None or qid in seen:
            log.debug("dropping malformed qaic-util block QID %s", qid)
            return
        seen.add(qid)
        entries.append(entry)

    for line in text.splitlines():
        m = _QID_RE.match(line)
        if m:
            flush()
            qid, fields = int(m.group(1)), {}
            continue
        if qid is None or ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key and key not in fields:
            fields[key] = value
    flush()
    return entries


def candidates(configured: str | None, search_path: str | None, default: str) -> list[str]:
    """Where qaic-util may be, in order: the configured path, $PATH, the SDK's install path."""
    out = [configured] if configured else []
    found = shutil.which("qaic-util", path=search_path)
    out += [found] if found else []
    out.append(default)
    return list(dict.fromkeys(out))


def _not_runnable(path: str) -> str | None:
    """Why `path` cannot even be tried, or None."""
    if not os.path.lexists(path):
        return "not found"
    if not os.path.isfile(path):
        return "not a regular file (or a dangling link)"
    if not os.access(path, os.X_OK):
        return "not executable"
    return None


@dataclass(frozen=True, slots=True)
class Probe:
    """The outcome of looking for a usable qaic-util."""

    path: str | None  # the usable one, or None
    tried: tuple[tuple[str, str], ...]  # (path, why it is not usable), in search order
    entries: list[QaicUtilEntry] | None = None  # the probe run's answer (None: that run failed)
    error: str | None = None  # why the probe run of a usable qaic-util failed


async def probe_qaic_util(paths: Sequence[str], timeout: float) -> Probe:
    """Try each candidate once: the first that runs wins. A run that fails after the program
    started (hang, crash, bad output) still means the tool is there: one bad run of a wedged
    device is not a missing tool, and its failures get logged per poll instead."""
    tried: list[tuple[str, str]] = []
    for path in paths:
        why = _not_runnable(path)
        if why is not None:
            tried.append((path, why))
            continue
        try:
            entries = await query_qaic_util(path, timeout)
        except QaicUtilUnusable as e:
            tried.append((path, str(e)))
            continue
        except QaicUtilError as e:
            return Probe(path, tuple(tried), None, str(e))
        return Probe(path, tuple(tried), entries)
    return Probe(None, tuple(tried))


class QaicUtilFinder:
    """Finds a usable qaic-util and says once, at warning level, what its absence costs.

    Called again while there is none (each health poll): the SDK may be installed, or the
    mount fixed, after the plugin started. Only a change is logged: usable -> unusable warns
    (with every path tried and why), unusable -> usable is an info line.
    """

    def __init__(
        self, configured: str | None, *, search_path: str | None = None, default: str = DEFAULT_PATH
    ) -> None:
        self.configured = configured
        self.search_path = search_path
        self.default = default
        self.usable: bool | None = None  # None until the first probe

    async def find(self, timeout: float) -> Probe:
        probe = await probe_qaic_util(
            candidates(self.configured, self.search_path, self.default), timeout
        )
        if probe.path is None:
            self.unusable(probe.tried)
        else:
            if self.usable is False:
                log.info(
                    "qaic-util usable now: SKUs from firmware, Status health signal on",
                    extra={"event": "qaic_util_found", "path": probe.path},
                )
            self.usable = True
        return probe

    def unusable(self, tried: Sequence[tuple[str, str]]) -> None:
        """Say (once per loss) that there is no usable qaic-util, and what that means."""
        if self.usable is False:
            return
        self.usable = False
        where = "; ".join(f"{path}: {why}" for path, why in tried)
        log.warning(
            "no usable qaic-util (%s): SKUs are guesses (every SoC Standard unless "
            "QAIC_SKU_OVERRIDES names it), multi-SoC cards are unproven, and the qaic-util "
            "Status health signal and PreStart Status check are off. Mount the host's "
            "Platform SDK (/opt/qti-aic) into the plugin or set QAIC_UTIL_PATH",
            where,
            extra={
                "event": "qaic_util_unusable",
                "tried": [{"path": path, "reason": why} for path, why in tried],
            },
        )


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # the tool runs in its own session, so this also reaps helpers that hold our pipes open
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _reap(proc: asyncio.subprocess.Process) -> None:
    _kill_group(proc)
    # a second cancellation must not leave a zombie: the original error is re-raised anyway
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(proc.wait(), 5.0)


def _tail(data: bytes, limit: int = 300) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]


async def query_qaic_util(path: str, timeout: float) -> list[QaicUtilEntry]:
    """Run `<path> -q` and parse it, bounded by `timeout` seconds.

    Raises QaicUtilError on timeout (the process group is killed first), non-zero exit, or
    output with no parseable block. Empty output with exit 0 means "no devices": [].
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "-q",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        # ENOENT for a file that exists: its ELF interpreter (ld-linux for its arch) is missing
        hint = (
            " (wrong architecture, or its dynamic loader is missing?)"
            if os.path.exists(path)
            else ""
        )
        raise QaicUtilUnusable(f"cannot execute: {exc.strerror or exc}{hint}") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _reap(proc)
        raise QaicUtilError(f"{path} -q did not finish within {timeout:g}s; killed it") from None
    except BaseException:
        await _reap(proc)  # cancelled: never leave the tool running behind us
        raise
    rc = proc.returncode
    err = _tail(stderr)
    if rc in _CANNOT_START or _LOADER_FAILURE in err:
        raise QaicUtilUnusable(f"exited {rc} before running: {err or 'no error output'}")
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited {rc}"
        raise QaicUtilError(f"{path} -q {how}: {err or 'no error output'}")
    if len(stdout) > _MAX_OUTPUT:
        raise QaicUtilError(f"{path} -q printed {len(stdout)} bytes; refusing to parse")
    text = stdout.decode("utf-8", errors="replace")
    entries = parse_qaic_util(text)
    if not entries and text.strip():
        raise QaicUtilError(f"{path} -q printed no parseable QID block: {_tail(stdout)!r}")
    return entries
