"""Issue 6's table, printed and as Markdown: one row per figure of the plugin process, next to
its floor and its target (bench/live/rows.py fills it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.common.stats import Dist


@dataclass
class Row:
    """One line of the table."""

    figure: str
    unit: str
    value: Dist
    target: str
    met: bool | None  # None: no target, or not judged (see note)
    floor_name: str | None = None
    floor: Dist | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio_median(self) -> float | None:
        if self.floor is None or self.floor.median <= 0:
            return None
        return self.value.median / self.floor.median

    @property
    def ratio_p99(self) -> float | None:
        if self.floor is None or self.floor.p99 <= 0:
            return None
        return self.value.p99 / self.floor.p99

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_median"] = self.ratio_median
        d["ratio_p99"] = self.ratio_p99
        return d


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100:
        s = f"{x:.0f}"
    elif a >= 10:
        s = f"{x:.1f}"
    elif a >= 1:
        s = f"{x:.2f}"
    else:
        s = f"{x:.3f}"
    return f"{s} {unit}".rstrip()


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _met(m: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[m]


def table(rows: Sequence[Row]) -> str:
    head = [
        "figure",
        "runs",
        "median",
        "p99",
        "floor med / p99",
        "ratio med / p99",
        "target",
        "met",
    ]
    body: list[list[str]] = []
    for r in rows:
        v = r.value
        floor = "-" if r.floor is None else f"{_num(r.floor.median)} / {_num(r.floor.p99, r.unit)}"
        ratio = "-" if r.floor is None else f"{_ratio(r.ratio_median)} / {_ratio(r.ratio_p99)}"
        one = v.runs == 1
        body.append(
            [
                r.figure,
                str(v.runs),
                _num(v.median, r.unit),
                "-" if one else _num(v.p99, r.unit),
                floor,
                ratio,
                r.target,
                _met(r.met),
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for b in body:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)))
    return "\n".join(lines)


def markdown(rows: Sequence[Row]) -> str:
    """The same table as Markdown, for docs/benchmarks.md."""
    out = [
        "| figure | runs | median | p99 | floor (median / p99) | ratio (median / p99) "
        "| target | met |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        v = r.value
        floor = (
            "-"
            if r.floor is None
            else f"{_num(r.floor.median)} / {_num(r.floor.p99, r.unit)} ({r.floor_name})"
        )
        ratio = "-" if r.floor is None else f"{_ratio(r.ratio_median)} / {_ratio(r.ratio_p99)}"
        out.append(
            f"| {r.figure} | {v.runs} | {_num(v.median, r.unit)} | "
            f"{'-' if v.runs == 1 else _num(v.p99, r.unit)} | {floor} | {ratio} | {r.target} "
            f"| {_met(r.met)} |"
        )
    return "\n".join(out)
