"""The allocation-quality tables (text and Markdown): every policy at every offered load."""

from __future__ import annotations

from .simulation import ADMISSIONS as ADMISSIONS
from .simulation import Admission, Outcome

POLICIES = ("ours", "kubelet-random", "kubelet-sorted", "first-fit")


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
