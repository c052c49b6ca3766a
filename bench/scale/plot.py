"""The scale run's plot, as an SVG written by hand (no plotting library in the venv): scheduling
throughput of the first fill, and the share of 4-SoC jobs on one card while the load is held
at 0.85 (the headline load of the allocation-quality runs; else the last load), against node
count, one line per mode and client-rate setting."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

Json = dict[str, Any]
W, H, PAD = 360, 240, 48
COLOURS = {"device-plugin": "#1f77b4", "dra": "#d62728"}


HEADLINE = "churn-0.85"


def _phase(r: Json, first: bool) -> str | None:
    names = list(r["phases"])
    if not names:
        return None
    return names[0] if first else (HEADLINE if HEADLINE in names else names[-1])


def _series(result: Json, figure: str) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in result["runs"]:
        name = _phase(r, figure == "throughput_pods_per_s")
        if name is None:
            continue
        v = r["phases"][name].get(figure)
        q = r.get("client_qps")
        label = r["mode"] + ("" if q is None else f", QPS {q:g}")
        if isinstance(v, int | float):
            out.setdefault(label, []).append((float(r["nodes"]), float(v)))
    return out


def _panel(x0: int, title: str, series: dict[str, list[tuple[float, float]]],
           y_max: float | None = None) -> list[str]:
    xs = sorted({x for pts in series.values() for x, _ in pts}) or [1.0]
    top = y_max or max([y for pts in series.values() for _, y in pts] + [1.0]) * 1.15
    left, right, bottom, upper = x0 + PAD, x0 + W - 12, H - 36, 30

    def sx(x: float) -> float:
        return left + (right - left) * (xs.index(x) / max(len(xs) - 1, 1))

    def sy(y: float) -> float:
        return bottom - (bottom - upper) * (y / top)

    g = [f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-size="13">'
         f'{escape(title)}</text>',
         f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>',
         f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{upper}" stroke="#444"/>']
    for x in xs:
        g.append(f'<text x="{sx(x):.1f}" y="{bottom + 16}" text-anchor="middle" '
                 f'font-size="11">{x:.0f}</text>')
    for i in range(5):
        y = top * i / 4
        g.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end" '
                 f'font-size="10">{y:.3g}</text>')
        g.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{right}" y2="{sy(y):.1f}" '
                 'stroke="#ddd"/>')
    g.append(f'<text x="{(left + right) / 2}" y="{H - 4}" text-anchor="middle" '
             'font-size="11">nodes (16 SoCs each)</text>')
    for k, (mode, pts) in enumerate(sorted(series.items())):
        c = COLOURS.get(mode.split(",")[0], "#333")
        dash = ' stroke-dasharray="5,3"' if "," in mode else ""
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(pts))
        g.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"{dash}/>')
        g += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>' for x, y in pts]
        g.append(f'<text x="{right - 4}" y="{upper + 14 + 14 * k}" text-anchor="end" '
                 f'font-size="11" fill="{c}">{escape(mode)}</text>')
    return g


def draw(result: Json, path: Path) -> Path:
    last_load = next((_phase(r, False) for r in result["runs"] if r["phases"]), "")
    body = _panel(0, "scheduling throughput, first fill (pods/s)",
                  _series(result, "throughput_pods_per_s"))
    body += _panel(W, f"4-SoC jobs on one card, {last_load} (%)",
                   _series(result, "one_card_4soc_pct"), y_max=100.0)
    path.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * W}" height="{H}" '
        f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
        + "\n".join(body) + "\n</svg>\n"
    )
    return path
