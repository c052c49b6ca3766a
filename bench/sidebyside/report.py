"""Issue 11's table: each figure for ours and for the Go peer, the ratio, the floor of the same
run and the target (a ratio, judged here and printed, never an exit code). Where a target is
missed, `profile()` says where the cost goes, from the same run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.common.stats import Dist

from .model import SideBySide

MS = 1e3


@dataclass
class SbsRow:
    figure: str
    unit: str
    ours: Dist | None
    peer: Dist | None
    target: str
    met: bool | None  # None: no target, or the peer is unavailable for a peer-relative one
    floor_name: str = ""
    floor: Dist | None = None

    @property
    def ratio(self) -> float | None:
        """ours / peer (medians): below 1 we are ahead."""
        if self.ours is None or self.peer is None or self.peer.median <= 0:
            return None
        return self.ours.median / self.peer.median

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio_ours_over_peer": self.ratio}


def _dist(values: dict[str, list[float]], key: str, scale: float = 1.0) -> Dist | None:
    xs = values.get(key)
    return Dist.of(xs, scale) if xs else None


def _fact(facts: dict[str, Any], key: str, sub: str) -> Dist | None:
    v = facts.get(key)
    return Dist.single(float(v[sub])) if isinstance(v, dict) and sub in v else None


def rows(r: SideBySide) -> list[SbsRow]:
    o, p, f = r.ours, r.peer, r.floor
    out: list[SbsRow] = []

    cpu_o, cpu_p = _dist(o.values, "idle.cpu", MS), _dist(p.values, "idle.cpu", MS)
    out.append(
        SbsRow(
            "idle CPU, own, per 60 s",
            "ms",
            cpu_o,
            cpu_p,
            "<= 2x peer",
            None if cpu_o is None or cpu_p is None else cpu_o.median <= 2 * cpu_p.median,
            "bare grpcio server, same windows",
            _dist(f.values, "idle.cpu", MS),
        )
    )
    out.append(
        SbsRow(
            "  idle CPU of children (qaic-util), per 60 s",
            "ms",
            _dist(o.values, "idle.cpu_children", MS),
            _dist(p.values, "idle.cpu_children", MS),
            "-",
            None,
        )
    )
    rss_o, rss_f = _fact(o.facts, "rss_idle", "VmRSS"), _fact(f.facts, "rss_idle", "VmRSS")
    out.append(
        SbsRow(
            "idle RSS after registration",
            "MB",
            rss_o,
            _fact(p.facts, "rss_idle", "VmRSS"),
            "<= floor + 10 MB",
            None if rss_o is None or rss_f is None else rss_o.median <= rss_f.median + 10,
            "bare grpcio server process",
            rss_f,
        )
    )
    out.append(
        SbsRow(
            "  of which anonymous",
            "MB",
            _fact(o.facts, "rss_idle", "RssAnon"),
            _fact(p.facts, "rss_idle", "RssAnon"),
            "-",
            None,
            "bare grpcio server process",
            _fact(f.facts, "rss_idle", "RssAnon"),
        )
    )
    n = int(o.facts.get("allocates", 0))
    out.append(
        SbsRow(
            f"RSS after {n:,} Allocates",
            "MB",
            _fact(o.facts, "rss_after_allocates", "VmRSS"),
            _fact(p.facts, "rss_after_allocates", "VmRSS"),
            "-",
            None,
        )
    )
    st_o, st_p = _dist(o.values, "start.register", MS), _dist(p.values, "start.register", MS)
    out.append(
        SbsRow(
            "process start -> first Register",
            "ms",
            st_o,
            st_p,
            "<= 0.5x peer",
            None if st_o is None or st_p is None else st_o.median <= 0.5 * st_p.median,
            'python -c "import grpc"',
            _dist(f.values, "import_grpc", MS),
        )
    )
    al_o, fl = _dist(o.values, "allocate", MS), _dist(f.values, "unary", MS)
    out.append(
        SbsRow(
            "Allocate, 1 device, median",
            "ms",
            al_o,
            _dist(p.values, "allocate", MS),
            "ours <= 1.1x floor",
            None if al_o is None or fl is None else al_o.median <= 1.1 * fl.median,
            "empty grpcio unary call",
            fl,
        )
    )
    for key, label in (
        ("health", "health change (reset) -> kubelet"),
        ("restart", "kubelet restart -> Register"),
    ):
        d_o, d_p = _dist(o.values, key, MS), _dist(p.values, key, MS)
        out.append(
            SbsRow(
                label,
                "ms",
                d_o,
                d_p,
                ">= 20x faster than peer",
                None if d_o is None or d_p is None else d_p.median >= 20 * d_o.median,
            )
        )
    if "binary_mb" in p.facts:
        out.append(
            SbsRow(
                "peer binary (static, stripped)",
                "MB",
                None,
                Dist.single(float(p.facts["binary_mb"])),
                "ours: image <= 80 MB/arch (.ci/image-stage.sh)",
                None,
            )
        )
    return out


def _num(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 1 else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def _fmt(d: Dist | None) -> str:
    if d is None:
        return "-"
    if d.runs == 1:
        return _num(d.median)
    return f"{_num(d.median)} (p99 {_num(d.p99)}, n={d.runs})"


def table(rs: Sequence[SbsRow], peer_status: str, peer_available: bool) -> str:
    head = (
        f"{'figure':<44} {'unit':<4} {'ours':>28} {'Go peer':>28} {'ours/peer':>9}  "
        f"{'floor (same run)':>28} {'ours/floor':>10}  {'target':<26} met"
    )
    lines = [
        "side by side with Intel's NPU device plugin v0.36.0 (Go): "
        + (peer_status if peer_available else f"peer unavailable: {peer_status}"),
        head,
        "-" * len(head),
    ]
    for r in rs:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        floor = _fmt(r.floor) if r.floor else "-"
        of = (
            f"{r.ours.median / r.floor.median:.2f}x"
            if r.ours and r.floor and r.floor.median > 0
            else "-"
        )
        lines.append(
            f"{r.figure:<44} {r.unit:<4} {_fmt(r.ours):>28} {_fmt(r.peer):>28} {ratio:>9}  "
            f"{floor:>28} {of:>10}  {r.target:<26} {met}"
        )
    return "\n".join(lines)


def profile(r: SideBySide, rs: Sequence[SbsRow]) -> str:
    """Where our cost goes, printed whenever a footprint target is missed."""
    missed = {x.figure for x in rs if x.met is False}
    if not missed:
        return "every side-by-side target met"
    lines = ["profile of the misses (same run):"]
    lines.append(
        "  our threads, CPU ms per 60 s idle: "
        + ", ".join(
            f"{k} {v * MS:.0f}" for k, v in sorted(r.threads_cpu.items(), key=lambda kv: -kv[1])
        )
    )
    total = sum(ms for _, ms in r.import_profile) or 1.0
    lines.append(
        f"  imports at start ({total:.0f} ms self time, PYTHONPROFILEIMPORTTIME): "
        + ", ".join(f"{k} {ms:.0f} ms ({100 * ms / total:.0f}%)" for k, ms in r.import_profile[:8])
    )
    if r.rss_by_import:
        lines.append(
            "  RSS each import step adds (fresh interpreter): "
            + ", ".join(f"{name} +{mb:.1f} MB" for name, mb in r.rss_by_import)
        )
    fl, pbf, al = (
        _dist(r.floor.values, "unary", MS),
        _dist(r.floor.values, "pb_allocate", MS),
        _dist(r.ours.values, "allocate", MS),
    )
    if fl and pbf and al:
        lines.append(
            f"  Allocate medians: empty bytes call {_num(fl.median)} ms, a constant-reply protobuf "
            f"servicer {_num(pbf.median)} ms ({pbf.median / fl.median:.2f}x), ours "
            f"{_num(al.median)} ms ({al.median / fl.median:.2f}x the bytes call, "
            f"{al.median / pbf.median:.2f}x the protobuf servicer)"
        )
    for who, side in (("ours", r.ours), ("floor", r.floor), ("peer", r.peer)):
        rss = side.facts.get("rss_idle")
        if isinstance(rss, dict):
            lines.append(
                f"  idle RSS {who}: {rss['VmRSS']:.1f} MB = anon {rss['RssAnon']:.1f} "
                f"+ file {rss['RssFile']:.1f}"
            )
    return "\n".join(lines)
