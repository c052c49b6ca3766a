"""Issue 6's job, as `python -m bench` runs it: the allocation-quality sweep (bench/quality), then
every live figure of the plugin process, printed as one table next to its floors, with the
quality tables; returns what goes into the JSON.

The quality run comes first because the live run replays its recorded preferred-allocation
requests against the process (the cross-check) and uses them as GetPreferredAllocation inputs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from bench.common.floors import FloorServer
from bench.quality.report import quality_markdown, quality_table
from bench.quality.simulation import ADMISSIONS, MIX, node_placements, run_all

from .base import SHARES, SOCS, Counts, Samples
from .main_process import main_process
from .rows import build_rows
from .starts_and_snapshots import shares, snapshot_build, snapshot_send, starts
from .table import markdown, table

SWEEP = (0.6, 0.85, 1.0)


async def _run(
    counts: Counts,
    work: Path,
    s: Samples,
    preferred_inputs: dict[int, list[list[str]]],
    crosscheck: list[tuple[list[str], int, list[str]]],
) -> None:
    floor = await FloorServer.start(work / "floor" / "floor.sock")
    try:
        await main_process(counts, work, s, floor, preferred_inputs, crosscheck)
    finally:
        await floor.stop()
    await starts(counts, work, s)
    s.mark_load("starts")
    await shares(counts, work, s)
    s.mark_load("shares")
    for key, socs, n_shares in (
        ("snap.floor", 1, 1),
        ("snap.256", 256, 1),
        ("snap.shares", SOCS, SHARES),
    ):
        await snapshot_send(counts, work, s, key, socs, n_shares)
        if key != "snap.floor":
            snapshot_build(counts, s, f"build.{key}", socs, n_shares)
    s.mark_load("snapshots")


def run(
    counts: Counts, work: Path, *, seed: int, load: float, print_markdown: bool
) -> tuple[dict[str, Any], bool]:
    """Issue 6's figures: the plugin alone, each next to its floor. The bool is False when the
    process answered a preferred-allocation request differently from the pure policy."""
    s = Samples()
    ok = True
    placements = node_placements(work / "plan")
    loads = sorted({*SWEEP, load})
    quality = {at: run_all(placements, seed, counts.quality_events, at) for at in loads}
    head = quality[load]["prefer"]["ours"]
    preferred_inputs: dict[int, list[list[str]]] = {1: [], 2: [], 4: []}
    for available, size, _ in head.requests:
        preferred_inputs[size].append(available)
    s.mark_load("quality")
    asyncio.run(_run(counts, work, s, preferred_inputs, head.requests))
    if s.facts["crosscheck_mismatches"]:
        ok = False
        print(
            f"BROKEN: the process answered {s.facts['crosscheck_mismatches']} of "
            f"{s.facts['crosscheck_requests']} preferred-allocation requests differently "
            "from preferred_allocation()",
            file=sys.stderr,
        )
    rows = build_rows(s, counts, quality[load]["prefer"], load)
    print()
    print(table(rows))
    print()
    print(
        f"allocation quality: 16 Ultra cards, {counts.quality_events:,} events, seed "
        f"{seed}, job mix {MIX} (SoCs: weight), admission prefer | require"
    )
    print(quality_table(quality))
    print()
    print(
        f"preferred-allocation cross-check: the process agreed on "
        f"{s.facts['crosscheck_requests'] - s.facts['crosscheck_mismatches']} of "
        f"{s.facts['crosscheck_requests']} requests"
    )
    if print_markdown:
        print()
        print(markdown(rows))
        print()
        print(quality_markdown(quality))
    result = {
        "rows": [r.to_json() for r in rows],
        "quality": {
            str(at): {adm: {n: o.to_json() for n, o in by[adm].items()} for adm in ADMISSIONS}
            for at, by in quality.items()
        },
        "facts": s.facts,
        "load_by_phase": s.load,
    }
    return result, ok
