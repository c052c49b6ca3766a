"""Issue 11's job, as `python -m bench` runs it: find (or build) the Go peer, run both plugins
side by side, print the table and the profile of any miss; returns what goes into the JSON.

A machine without the peer (no Go, no root, a failed build) prints "peer unavailable" and still
reports our own figures: the peer's absence is never an error.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from . import measure, peer, report
from .model import SBS_FULL, SBS_QUICK


def run(work: Path, *, quick: bool, build_peer: bool) -> dict[str, Any]:
    """Issue 11's figures: ours and the Go peer on one node, one kubelet simulator."""
    counts = SBS_QUICK if quick else SBS_FULL
    found = peer.locate(build=build_peer)
    if found.path is None:
        print(f"peer unavailable: {found.reason}; reporting our figures only", flush=True)
    t0 = time.monotonic()
    r = asyncio.run(measure.run(counts, work, found))
    rs = report.rows(r)
    print()
    print(report.table(rs, r.peer_status, r.peer_available))
    print(report.profile(r, rs))
    print(
        f"side-by-side: {time.monotonic() - t0:.0f} s; load average now "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return {
        "counts": counts.__dict__,
        "peer": {"available": r.peer_available, "status": r.peer_status},
        "rows": [x.to_json() for x in rs],
        "ours": r.ours.__dict__,
        "peer_figures": r.peer.__dict__,
        "floor": r.floor.__dict__,
        "import_profile": r.import_profile,
        "threads_cpu": r.threads_cpu,
        "rss_by_import": r.rss_by_import,
    }
