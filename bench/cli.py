"""`python -m bench [--quick] [--record] [--side-by-side on|only|off]`: every figure of issue 6,
then issue 11's side-by-side run with the Go peer (bench/sidebyside/), tables and JSON.
`python -m bench scale [...]`: the scale run with kwok nodes (bench/scale/job.py).

Timings are reported, never asserted: the exit code is 0 unless something broke (the plugin did
not register, exited badly, or answered differently from the pure policy it runs). A machine
without Go (or root) prints "peer unavailable" and still reports our own side-by-side figures.
"""

from __future__ import annotations

import argparse
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

import grpc

from bench.common.errors import BenchError
from bench.live import job as live_job
from bench.live.base import FULL, QUICK
from bench.scale import job as scale_job
from bench.sidebyside import job as sidebyside_job

HERE = Path(__file__).resolve().parent
LATEST = HERE / "results" / "latest.json"
RECORD = HERE / "results.json"


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["scale"]:  # the scale run (bench/scale/): a command of its own
        return scale_job.main(argv[1:])
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
        help="use the Go peer and the scale smoke's kwok only if cached; never build them",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, trees)")
    args = p.parse_args(argv)
    counts = QUICK if args.quick else FULL
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
    # One job after another, each in its package (bench/<job>/job.py), each printing its tables
    # and returning its part of the JSON; a further job is one more flag and one more call here.
    try:
        if args.side_by_side != "only":
            issue6, ok = live_job.run(
                counts, work, seed=args.seed, load=args.load, print_markdown=args.markdown
            )
            result.update(issue6)
        if args.side_by_side != "off":
            result["side_by_side"] = sidebyside_job.run(
                work, quick=args.quick, build_peer=not args.no_peer_build
            )
        if args.quick and args.side_by_side != "only":  # the scale smoke (bench/scale/)
            result["scale"] = scale_job.smoke(work, build=not args.no_peer_build)
    except BenchError as e:
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
