"""`python -m bench [--quick] [--record]`: every figure of issue 6, a table and JSON.

Timings are reported, never asserted: the exit code is 0 unless something broke (the plugin did
not register, exited badly, or answered differently from the pure policy it runs).
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

from . import live
from .quality import ADMISSIONS, MIX, Admission, Outcome, node_placements, run_all
from .stats import Dist, Row, markdown, table

HERE = Path(__file__).resolve().parent
LATEST = HERE / "results" / "latest.json"
RECORD = HERE / "results.json"
MS = 1e3
KIB = 1 / 1024
SWEEP = (0.6, 0.85, 1.0)
POLICIES = ("ours", "kubelet-random", "kubelet-sorted", "first-fit")


def _clean_environment() -> None:
    """The plugin inherits our environment: start it from defaults, as the tests do."""
    for k in list(os.environ):
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


def _latency_row(
    s: live.Samples, key: str, figure: str, target: str, *, floor: str | None, limit: str
) -> Row:
    """`limit`: how `target` is judged: "ratio<=X" (median ratio), "median<=X" or "p99<=X" (ms)."""
    value = Dist.of(s.values[key], MS)
    fl = Dist.of(s.values[floor], MS) if floor else None
    kind, _, bound = limit.partition("<=")
    met: bool | None = None
    if kind == "ratio" and fl is not None:
        met = value.median / fl.median <= float(bound)
    elif kind == "median":
        met = value.median <= float(bound)
    elif kind == "p99":
        met = value.p99 <= float(bound)
    floor_names = {
        "floor.unary": "empty grpcio unary call, Unix socket, other process",
        "floor.inotify": "inotify event, same directory",
        "floor.import_grpc": 'python -c "import grpc"',
        "snap.floor": "1-device snapshot, same server",
    }
    return Row(
        figure,
        "ms",
        value,
        target,
        met,
        floor_name=floor_names.get(floor or ""),
        floor=fl,
    )


def build_rows(
    s: live.Samples, counts: live.Counts, quality: dict[str, Outcome], load: float
) -> list[Row]:
    f = s.facts
    rows = [
        _latency_row(
            s,
            "allocate.1",
            "Allocate, 1 SoC",
            "<= 1.5x floor (median)",
            floor="floor.unary",
            limit="ratio<=1.5",
        ),
        _latency_row(
            s,
            "allocate.4",
            "Allocate, 4 SoCs",
            "<= 1.5x floor (median)",
            floor="floor.unary",
            limit="ratio<=1.5",
        ),
    ]
    for size in (1, 2, 4):
        rows.append(
            _latency_row(
                s,
                f"preferred.{size}",
                f"GetPreferredAllocation, 64 SoCs, size {size}",
                "<= 2 ms (median)",
                floor="floor.unary",
                limit="median<=2",
            )
        )
    rows += [
        _latency_row(
            s,
            "flip.removed",
            "device node removed -> Unhealthy snapshot",
            "p99 <= 100 ms",
            floor="floor.inotify",
            limit="p99<=100",
        ),
        _latency_row(
            s,
            "flip.restored",
            "device node restored -> Healthy snapshot",
            "-",
            floor="floor.inotify",
            limit="-",
        ),
        _latency_row(
            s,
            "reset.down",
            "reset (accel leaves sysfs, node goes) -> snapshot",
            "p99 <= 250 ms",
            floor="floor.inotify",
            limit="p99<=250",
        ),
        _latency_row(
            s,
            "reset.up",
            "reset recovery -> Healthy snapshot",
            "-",
            floor="floor.inotify",
            limit="-",
        ),
        _latency_row(
            s,
            "sysfs.down",
            f"sysfs-only reset signal -> snapshot (rescan {live.RESYNC_SECONDS:g} s)",
            "p99 <= 250 ms",
            floor="floor.inotify",
            limit="p99<=250",
        ),
        _latency_row(
            s,
            "sysfs.up",
            "sysfs-only recovery -> Healthy snapshot",
            "-",
            floor="floor.inotify",
            limit="-",
        ),
        _latency_row(
            s,
            "restart.register",
            "kubelet restart -> Register received",
            "p99 <= 500 ms",
            floor=None,
            limit="p99<=500",
        ),
        _latency_row(
            s,
            "start.register",
            "process start -> first Register",
            "<= 1500 ms (median)",
            floor="floor.import_grpc",
            limit="median<=1500",
        ),
    ]
    floor_rss = Dist.single(f["floor_rss_mb"])
    rows.append(
        Row(
            "idle RSS, 64 SoCs, SKU mode",
            "MB",
            Dist.single(f["rss_idle_mb"]),
            "<= 60 MB",
            f["rss_idle_mb"] <= 60,
            floor_name="bare grpcio server process",
            floor=floor_rss,
            extra={"threads": f["threads_idle"], "fds": f["fds_idle"]},
        )
    )
    n = int(f["allocates_total"])
    rows.append(
        Row(
            f"RSS after {n:,} Allocates",
            "MB",
            Dist.single(f["rss_after_mb"]),
            "-",
            None,
            floor_name="bare grpcio server process",
            floor=floor_rss,
            extra={
                "hwm_mb": f["rss_hwm_mb"],
                "threads": f["threads_after"],
                "fds": f["fds_after"],
                "warm_mb": f["rss_warm_mb"],
            },
        )
    )
    growth = 100 * (f["rss_after_mb"] / f["rss_idle_mb"] - 1)
    rows.append(
        Row(f"RSS growth, idle -> {n:,} Allocates", "%", Dist.single(growth), "<= 5%", growth <= 5)
    )
    warm_n = int(f["allocates_in_latency"])
    late = 100 * (f["rss_after_mb"] / f["rss_warm_mb"] - 1)
    rows.append(
        Row(
            f"RSS growth, {warm_n:,} -> {n:,} Allocates (warm)",
            "%",
            Dist.single(late),
            "-",
            None,
        )
    )
    for key, label in (("snap.256", "256 SoCs"), ("snap.shares", "64 SoCs x 16 shares")):
        rows.append(
            _latency_row(
                s,
                key,
                f"ListAndWatch build+send, {label}",
                "<= 10 ms (median)",
                floor="snap.floor",
                limit="median<=10",
            )
        )
        rows.append(
            _latency_row(
                s,
                f"build.{key}",
                f"  of which build+serialise, {label}",
                "-",
                floor=None,
                limit="-",
            )
        )
    for key, label in (
        ("snap.256_message_bytes", "256 SoCs"),
        ("shares_message_bytes", "64 SoCs x 16 shares, from the process"),
    ):
        nbytes = float(f[key])
        rows.append(
            Row(
                f"ListAndWatch message, {label}",
                "KiB",
                Dist.single(nbytes * KIB),
                "far under 4 MiB (<= 10%)",
                nbytes <= live.MAX_MESSAGE / 10,
                note=f"{100 * nbytes / live.MAX_MESSAGE:.2f}% of 4 MiB",
            )
        )
    rows.append(
        _latency_row(
            s,
            "shares.removed",
            "device node removed -> snapshot, 64x16 shares",
            "-",
            floor="floor.inotify",
            limit="-",
        )
    )
    ours = quality["ours"]
    others = {k: v for k, v in quality.items() if k != "ours"}
    for size, target in ((4, ">= 95% and > every baseline"), (2, "> every baseline")):
        best_name = max(others, key=lambda k: others[k].pct_one_card(size))
        best = others[best_name].pct_one_card(size)
        mine = ours.pct_one_card(size)
        met = mine > best and (size != 4 or mine >= 95)
        rows.append(
            Row(
                f"{size}-SoC jobs on one card, load {load:g} (ours)",
                "%",
                Dist.single(mine),
                target,
                met,
                floor_name=f"best baseline: {best_name}",
                floor=Dist.single(best),
            )
        )
    return rows


def quality_table(result: dict[float, dict[Admission, dict[str, Outcome]]]) -> str:
    head = (
        f"{'offered load':>12}  {'policy':<15} {'4-SoC 1 card':>12} {'(1 card free)':>13} "
        f"{'2-SoC 1 card':>12} {'unplaced':>9} {'unplaced (require)':>19} {'util':>5}"
    )
    lines = [head, "-" * len(head)]
    for load, by_adm in result.items():
        for name in POLICIES:
            p = by_adm["prefer"][name]
            r = by_adm["require"][name]
            req = f"{sum(r.unplaced.values())} ({r.unplaced.get(4, 0)} 4-SoC)"
            lines.append(
                f"{load:>12g}  {name:<15} {p.pct_one_card(4):>11.1f}% {p.pct_fits(4):>12.1f}% "
                f"{p.pct_one_card(2):>11.1f}% "
                f"{sum(p.unplaced.values()):>9} {req:>19} {p.mean_utilisation:>5.2f}"
            )
    return "\n".join(lines)


def quality_markdown(result: dict[float, dict[Admission, dict[str, Outcome]]]) -> str:
    lines = [
        "| offered load | policy | 4-SoC jobs on one card | 4-SoC jobs that found a card "
        "with room | 2-SoC jobs on one card | not placed (prefer) | not placed (require) "
        "| mean utilisation |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for load, by_adm in result.items():
        for name in POLICIES:
            p = by_adm["prefer"][name]
            r = by_adm["require"][name]
            lines.append(
                f"| {load:g} | {name} | {p.pct_one_card(4):.1f}% | {p.pct_fits(4):.1f}% "
                f"| {p.pct_one_card(2):.1f}% | {sum(p.unplaced.values())} "
                f"| {sum(r.unplaced.values())} ({r.unplaced.get(4, 0)} 4-SoC) "
                f"| {p.mean_utilisation:.2f} |"
            )
    return "\n".join(lines)


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
    s = live.Samples()
    ok = True
    try:
        placements = node_placements(work / "plan")
        loads = sorted({*SWEEP, args.load})
        quality = {
            load: run_all(placements, args.seed, counts.quality_events, load) for load in loads
        }
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
    except live.BenchError as e:
        print(f"BROKEN: {e}\nwork directory kept: {work}", file=sys.stderr)
        return 1
    meta["load_after"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
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
    print(
        f"load average before {'/'.join(f'{x:.2f}' for x in meta['load_before'])}, after "
        f"{'/'.join(f'{x:.2f}' for x in meta['load_after'])} on {meta['machine']['nproc']} "
        f"CPUs; {meta['seconds']} s; ratios compare with floors from this same run"
    )
    if args.markdown:
        print()
        print(markdown(rows))
        print()
        print(quality_markdown(quality))
    result = {
        "meta": meta,
        "rows": [r.to_json() for r in rows],
        "quality": {
            str(load): {adm: {n: o.to_json() for n, o in by[adm].items()} for adm in ADMISSIONS}
            for load, by in quality.items()
        },
        "facts": s.facts,
        "load_by_phase": s.load,
    }
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
