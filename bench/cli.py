"""`python -m bench [--quick] [--record] [--side-by-side on|only|off]`: every figure of issue 6,
then issue 11's side-by-side run with the Go peer (bench/sidebyside.py), tables and JSON.

Timings are reported, never asserted: the exit code is 0 unless something broke (the plugin did
not register, exited badly, or answered differently from the pure policy it runs). A machine
without Go (or root) prints "peer unavailable" and still reports our own side-by-side figures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import live, peer, sbs_report, sbs_types, sidebyside
from .quality import ADMISSIONS, MIX, node_placements, run_all
from .quality_report import quality_markdown, quality_table
from .rows import build_rows
from .stats import markdown, table

HERE = Path(__file__).resolve().parent
LATEST = HERE / "results" / "latest.json"
RECORD = HERE / "results.json"
SWEEP = (0.6, 0.85, 1.0)


def _clean_environment() -> None:
    """The plugin inherits our environment: start it from defaults, as the tests do."""
    for k in list(os.environ):
        if k in ("QAIC_TOOLS_DIR", "QAIC_TOOLS_DOWNLOAD"):  # where e2e/tools.sh caches the peer
            continue
        if k.startswith("QAIC_") or k == "ALLOWED_QAIC_DEVICE_SHARES":
            del os.environ[k]


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=HERE, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    commit = _git("rev-parse", "--short", "HEAD").strip()
    # The plugin runs from the checkout (editable install): say if it differs from the commit.
    dirty = _git("status", "--porcelain", "--", str(HERE.parent / "plugin_image")).splitlines()
    import grpc

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "mem_total_gb": round(mem_kb / 1e6, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "commit": commit,
        "plugin_uncommitted_changes": [line[3:] for line in dirty if line.strip()],
    }


async def _run(
    counts: live.Counts,
    work: Path,
    s: live.Samples,
    preferred_inputs: dict[int, list[list[str]]],
    crosscheck: list[tuple[list[str], int, list[str]]],
) -> None:
    floor = await live.FloorServer.start(work / "floor" / "floor.sock")
    try:
        await live.main_process(counts, work, s, floor, preferred_inputs, crosscheck)
    finally:
        await floor.stop()
    await live.starts(counts, work, s)
    s.mark_load("starts")
    await live.shares(counts, work, s)
    s.mark_load("shares")
    for key, socs, shares in (
        ("snap.floor", 1, 1),
        ("snap.256", 256, 1),
        ("snap.shares", live.SOCS, live.SHARES),
    ):
        await live.snapshot_send(counts, work, s, key, socs, shares)
        if key != "snap.floor":
            live.snapshot_build(counts, s, f"build.{key}", socs, shares)
    s.mark_load("snapshots")


def _issue6(
    args: argparse.Namespace, counts: live.Counts, work: Path
) -> tuple[dict[str, Any], bool]:
    """Issue 6's figures: the plugin alone, each next to its floor."""
    s = live.Samples()
    ok = True
    placements = node_placements(work / "plan")
    loads = sorted({*SWEEP, args.load})
    quality = {load: run_all(placements, args.seed, counts.quality_events, load) for load in loads}
    head = quality[args.load]["prefer"]["ours"]
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
    rows = build_rows(s, counts, quality[args.load]["prefer"], args.load)
    print()
    print(table(rows))
    print()
    print(
        f"allocation quality: 16 Ultra cards, {counts.quality_events:,} events, seed "
        f"{args.seed}, job mix {MIX} (SoCs: weight), admission prefer | require"
    )
    print(quality_table(quality))
    print()
    print(
        f"preferred-allocation cross-check: the process agreed on "
        f"{s.facts['crosscheck_requests'] - s.facts['crosscheck_mismatches']} of "
        f"{s.facts['crosscheck_requests']} requests"
    )
    if args.markdown:
        print()
        print(markdown(rows))
        print()
        print(quality_markdown(quality))
    result = {
        "rows": [r.to_json() for r in rows],
        "quality": {
            str(load): {adm: {n: o.to_json() for n, o in by[adm].items()} for adm in ADMISSIONS}
            for load, by in quality.items()
        },
        "facts": s.facts,
        "load_by_phase": s.load,
    }
    return result, ok


def _side_by_side(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Issue 11's figures: ours and the Go peer on one node, one kubelet simulator."""
    counts = sbs_types.SBS_QUICK if args.quick else sbs_types.SBS_FULL
    found = peer.locate(build=not args.no_peer_build)
    if found.path is None:
        print(f"peer unavailable: {found.reason}; reporting our figures only", flush=True)
    t0 = time.monotonic()
    r = asyncio.run(sidebyside.run(counts, work, found))
    rs = sbs_report.rows(r)
    print()
    print(sbs_report.table(rs, r.peer_status, r.peer_available))
    print(sbs_report.profile(r, rs))
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="about 10x fewer runs (CI smoke, ~1 min)")
    p.add_argument(
        "--record", action="store_true", help=f"also write {RECORD.relative_to(HERE.parent)}"
    )
    p.add_argument("--json", type=Path, default=LATEST, help="where to write the results")
    p.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    p.add_argument("--seed", type=int, default=6, help="allocation-quality seed (default 6)")
    p.add_argument(
        "--load",
        type=float,
        default=0.85,
        help="offered load of the headline allocation-quality run (default 0.85)",
    )
    p.add_argument(
        "--side-by-side",
        choices=("on", "only", "off"),
        default="on",
        help="issue 11's run next to the Go peer: after issue 6's figures (on), alone (only)",
    )
    p.add_argument(
        "--no-peer-build",
        action="store_true",
        help="use the Go peer only if already cached; never build it (e2e/tools.sh)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, trees)")
    args = p.parse_args(argv)
    counts = live.QUICK if args.quick else live.FULL
    _clean_environment()
    started = time.monotonic()
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "counts": counts.__dict__,
        "machine": _machine(),
        "load_before": os.getloadavg(),
        "seed": args.seed,
    }
    dirty = meta["machine"]["plugin_uncommitted_changes"]
    print(
        f"plugin code: commit {meta['machine']['commit'] or '?'}"
        + (f" plus uncommitted changes to {len(dirty)} file(s)" if dirty else ""),
        flush=True,
    )
    print(
        f"qaic-k8s bench ({meta['mode']}): {meta['machine']['nproc']} CPUs, "
        f"load average {'/'.join(f'{x:.2f}' for x in meta['load_before'])} before start",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="qaic-bench-"))
    result: dict[str, Any] = {"meta": meta}
    ok = True
    try:
        if args.side_by_side != "only":
            issue6, ok = _issue6(args, counts, work)
            result.update(issue6)
        if args.side_by_side != "off":
            result["side_by_side"] = _side_by_side(args, work)
    except live.BenchError as e:
        print(f"BROKEN: {e}\nwork directory kept: {work}", file=sys.stderr)
        return 1
    meta["load_after"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    print(
        f"load average before {'/'.join(f'{x:.2f}' for x in meta['load_before'])}, after "
        f"{'/'.join(f'{x:.2f}' for x in meta['load_after'])} on {meta['machine']['nproc']} "
        f"CPUs; {meta['seconds']} s; ratios compare with floors from this same run"
    )
    text = json.dumps(result, indent=1, default=str) + "\n"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text)
    print(f"wrote {args.json}")
    if args.record:
        RECORD.write_text(text)
        print(f"wrote {RECORD}")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1
