"""The rows of issue 6's table: each figure from the plugin process next to its floor, and the
allocation-quality headline (bench/quality) at the run's offered load."""

from __future__ import annotations

from bench.common.plugin_defaults import RESYNC_SECONDS
from bench.common.stats import Dist
from bench.quality.simulation import Outcome

from .base import MAX_MESSAGE, Counts, Samples
from .table import Row

MS = 1e3
KIB = 1 / 1024


def _latency_row(
    s: Samples, key: str, figure: str, target: str, *, floor: str | None, limit: str
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


def build_rows(s: Samples, counts: Counts, quality: dict[str, Outcome], load: float) -> list[Row]:
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
            f"sysfs-only reset signal -> snapshot (rescan {RESYNC_SECONDS:g} s)",
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
                nbytes <= MAX_MESSAGE / 10,
                note=f"{100 * nbytes / MAX_MESSAGE:.2f}% of 4 MiB",
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
