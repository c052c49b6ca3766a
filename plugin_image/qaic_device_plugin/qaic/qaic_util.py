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

from .model import QaicUtilEntry

log = logging.getLogger(__name__)

DEFAULT_PATH = "/opt/qti-aic/tools/qaic-util"

_QID_RE = re.compile(r"^\s*QID\s+(\d+)\s*$")
_PCI_RE = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_MAX_OUTPUT = 4 * 1024 * 1024  # a node's worth of blocks is a few KiB; anything huge is junk


class QaicUtilError(RuntimeError):
    """qaic-util could not tell us anything (missing, hung, crashed or printed nonsense)."""


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


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_qaic_util(configured: str | None) -> str | None:
    """Locate qaic-util: the configured path, then $PATH, then the SDK's install location."""
    if configured:
        if _executable(configured):
            return configured
        log.warning(
            "configured qaic-util %s is not an executable file; searching elsewhere",
            configured,
            extra={"event": "qaic_util_not_executable", "path": configured},
        )
    found = shutil.which("qaic-util")
    if found:
        return found
    if _executable(DEFAULT_PATH):
        return DEFAULT_PATH
    return None


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
        raise QaicUtilError(f"cannot run {path} -q: {exc}") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _reap(proc)
        raise QaicUtilError(f"{path} -q did not finish within {timeout:g}s; killed it") from None
    except BaseException:
        await _reap(proc)  # cancelled: never leave the tool running behind us
        raise
    rc = proc.returncode
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited {rc}"
        raise QaicUtilError(f"{path} -q {how}: {_tail(stderr) or 'no error output'}")
    if len(stdout) > _MAX_OUTPUT:
        raise QaicUtilError(f"{path} -q printed {len(stdout)} bytes; refusing to parse")
    text = stdout.decode("utf-8", errors="replace")
    entries = parse_qaic_util(text)
    if not entries and text.strip():
        raise QaicUtilError(f"{path} -q printed no parseable QID block: {_tail(stdout)!r}")
    return entries
