"""`python -m bench scale [--quick]` (also `python -m bench.scale`, `make bench-scale`): the scale
run of docs/benchmarks.md. For each node count, device-plugin mode then DRA mode, each on a
fresh real control plane with kwok's fake nodes; a table of both modes side by side (DRA /
device-plugin ratios next to the absolutes), the JSON, and a plot against node count.

Figures are reported, never judged: the exit code is 1 only when something broke (a process
exited, nodes never got Ready, a watch failed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common.errors import BenchError
from cluster.tools import find_binaries

from . import kwok, manifests, measure, plot, report
from .publishers import DEFAULT_NODE_CARDS, NODE_CARDS, discover, node_cards

HERE = Path(__file__).resolve().parent
LATEST = HERE.parent / "results" / "scale.json"  # gitignored
RECORD = HERE / "results.json"  # the committed copy docs/benchmarks.md quotes (--record)
#: Client QPS lifted far above what 2 CPUs can serve: the control plane's own pace shows.
LIFTED_QPS = 1000.0
FULL = measure.Plan(nodes=(100, 300, 1000), loads=(0.6, 0.85, 1.0), churn_rate=5.0,
                    churn_seconds=45.0, fill_timeout=1200.0, client_qps=(None, LIFTED_QPS),
                    seed=22)
QUICK = measure.Plan(nodes=(20,), loads=(0.85,), churn_rate=4.0, churn_seconds=15.0,
                     fill_timeout=120.0, client_qps=(None,), seed=22, idle_seconds=10.0)
MODES = (False, True)  # dra?


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE,
                          check=False, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else ""


def _meta(plan: measure.Plan, kw: kwok.Kwok) -> dict[str, Any]:
    slices = "plugin_image/qaic_device_plugin/kubelet/dra/slices.py"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "slices_py_uncommitted": bool(_git("status", "--porcelain", "--", f":(top){slices}")),
        # the driver's code runs from the checkout: say what differs from the commit
        "plugin_uncommitted_changes": [
            line[3:] for line in _git("status", "--porcelain", "--", ":(top)plugin_image")
            .splitlines() if line.strip()],
        "nproc": len(os.sched_getaffinity(0)),
        "load_before": os.getloadavg(),
        "plan": plan.__dict__,
        "kwok": f"{kwok.VERSION} ({kw.how})",
    }


def _qps(q: float | None) -> str:
    return "component defaults" if q is None else f"{q:g}"


def run(plan: measure.Plan, work: Path, *, build: bool = True,
        partial: Path | None = None, modes: Sequence[bool] = MODES) -> dict[str, Any]:
    """Every node count, client QPS setting and mode; prints a line per run and writes what it
    has so far to `partial` after each (a long run that breaks keeps its figures)."""
    kw = kwok.locate(build=build)
    layout = asyncio.run(discover(node_cards(plan.node_cards), partitions=plan.partitions))
    ask = ("one whole card" if plan.four_soc == manifests.FOUR_SOC_CARD
           else "four SoCs on one card")
    out: dict[str, Any] = {"meta": _meta(plan, kw), "runs": []}
    print(f"scale: {plan.nodes} nodes x {layout.socs} SoCs ({plan.node_cards}: "
          f"{NODE_CARDS[plan.node_cards]}), loads {plan.loads}, "
          f"kwok {kwok.VERSION} ({kw.how}), client QPS "
          f"{', '.join(_qps(q) for q in plan.client_qps)}; DRA: {len(layout.devices)} devices "
          f"and {len(layout.counter_sets)} counter sets a node, 4-SoC jobs ask {ask}"
          f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    for n in plan.nodes:
        for qps in plan.client_qps:
            for dra in modes:
                t0 = time.monotonic()
                mode = "dra" if dra else "device-plugin"
                r = measure.run(n, dra, qps, plan, kw, layout, work / f"{n}-{_qps(qps)}-{mode}")
                r["seconds"] = round(time.monotonic() - t0, 1)
                out["runs"].append(r)
                print(report.one_line(r), flush=True)
                if partial is not None:
                    partial.write_text(json.dumps(out, indent=1, default=str) + "\n")
    out["meta"]["load_after"] = os.getloadavg()
    return out


def _record(result: dict[str, Any]) -> None:
    RECORD.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {RECORD} and {plot.draw(result, RECORD.with_suffix('.svg'))}")


def smoke(work: Path, *, build: bool = True) -> dict[str, Any]:
    """`make bench-quick`'s part: the QUICK plan, figures printed, never judged. A machine
    without the tool cache's Kubernetes (make e2e builds it) or kwok says why and goes on."""
    why = None
    if find_binaries() is None:
        why = "Kubernetes v1.37.2 / etcd v3.7.3 not in the tool cache (make e2e builds them)"
    else:
        try:
            kwok.locate(build=build)
        except BenchError as e:
            why = str(e)
    if why is not None:
        print(f"scale smoke unavailable: {why}", flush=True)
        return {"available": False, "why": why}
    t0 = time.monotonic()
    result = run(QUICK, work / "scale", build=build)
    print(report.table(result))
    print(report.profile(result))
    print(f"scale smoke: {time.monotonic() - t0:.0f} s", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__)
    p.add_argument("--quick", action="store_true", help="20 nodes, one load (a ~2 min smoke)")
    p.add_argument("--nodes", type=int, nargs="+", help="node counts (default 100 300 1000)")
    p.add_argument("--loads", type=float, nargs="+", help="loads (default 0.6 0.85 1.0)")
    p.add_argument("--churn-seconds", type=float, help="seconds held at each load")
    p.add_argument("--client-qps", nargs="+", metavar="QPS|default",
                   help="kube-scheduler and kube-controller-manager client QPS (burst 2x), one "
                        f"run each; 'default': theirs (full run: default {LIFTED_QPS:g})")
    p.add_argument("--modes", nargs="+", choices=("device-plugin", "dra"),
                   default=["device-plugin", "dra"], help="which modes to run (default both)")
    p.add_argument("--dra-devices", choices=("partitioned", "socs"), default="partitioned",
                   help="DRA: what each node publishes: 'partitioned' (each SoC, each whole "
                        "Ultra card and its parts, with shared counters: the driver since "
                        "699f29a) or 'socs' (the 16 SoCs alone)")
    p.add_argument("--four-soc", choices=(manifests.FOUR_SOC_CONSTRAINT, manifests.FOUR_SOC_CARD),
                   default=manifests.FOUR_SOC_CONSTRAINT,
                   help="DRA: a 4-SoC job's claim: 'constraint' (4 SoCs with matchAttribute "
                        "cardID, the stack's template) or 'card' (1 device of the whole-card "
                        "class; needs --dra-devices partitioned)")
    p.add_argument("--node-cards", choices=tuple(NODE_CARDS), default=DEFAULT_NODE_CARDS,
                   help="the 16 SoCs of every fake node: 'ultra' (four Ultra cards) or 'mixed' "
                        "(3 Ultra + 2 Standard + 2 Pro cards: only 3 cards can hold a 4-SoC "
                        "job)")
    p.add_argument("--json", type=Path, default=LATEST, help="where to write the results")
    p.add_argument("--record", action="store_true",
                   help=f"also write {RECORD.relative_to(HERE.parents[1])} and its SVG")
    p.add_argument("--no-build", action="store_true", help="never build kwok (e2e/tools.sh)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--profile", action="store_true",
                   help="CPU profiles of kube-scheduler and kube-apiserver during the first "
                        "fill (go tool pprof -top in the JSON; raw profiles beside it)")
    p.add_argument("--report", type=Path, metavar="JSON",
                   help="only print the table and profile of an earlier run's JSON, redraw its SVG")
    args = p.parse_args(argv)
    if args.report:
        earlier = json.loads(args.report.read_text())
        print(report.headline(earlier))
        print()
        print(report.table(earlier))
        print(report.profile(earlier))
        print(report.profile_tops(earlier))
        print(f"wrote {plot.draw(earlier, args.report.with_suffix('.svg'))}")
        if args.record:
            _record(earlier)
        return 0
    if args.four_soc == manifests.FOUR_SOC_CARD and args.dra_devices == "socs":
        p.error("--four-soc card needs --dra-devices partitioned (no card devices without it)")
    plan = QUICK if args.quick else FULL
    qps = tuple(None if q == "default" else float(q) for q in args.client_qps or ())
    changes = {k: v for k, v in (("nodes", tuple(args.nodes or ())),
                                 ("loads", tuple(args.loads or ())),
                                 ("churn_seconds", args.churn_seconds),
                                 ("client_qps", qps),
                                 ("profile_dir", args.json.parent if args.profile else None))
               if v}
    changes["partitions"] = args.dra_devices == "partitioned"
    changes["four_soc"] = args.four_soc
    changes["node_cards"] = args.node_cards
    plan = measure.Plan(**{**plan.__dict__, **changes})
    work = Path(tempfile.mkdtemp(prefix="qaic-scale-"))
    started = time.monotonic()
    try:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = run(plan, work, build=not args.no_build, partial=args.json,
                     modes=[m == "dra" for m in args.modes])
    except BenchError as e:
        print(f"BROKEN: {e}\nwork directory kept: {work}")
        return 1
    result["meta"]["seconds"] = round(time.monotonic() - started, 1)
    print()
    print(report.headline(result))
    print()
    print(report.table(result))
    print(report.profile(result))
    print(report.profile_tops(result))
    args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {args.json}")
    drawn = plot.draw(result, args.json.with_suffix(".svg"))
    print(f"wrote {drawn}")
    if args.record:
        _record(result)
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0
