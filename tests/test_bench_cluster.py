"""The cluster simulation is deterministic, and DRA mode never splits a 4-SoC job."""

from __future__ import annotations

from pathlib import Path

from bench.cluster.simulation import markdown, run, simulate
from bench.quality.simulation import node_placements


def test_dra_keeps_four_soc_jobs_on_one_card_and_runs_are_repeatable() -> None:
    result = run(1500, seed=3, loads=(1.0,))
    again = run(1500, seed=3, loads=(1.0,))
    assert markdown(result) == markdown(again)
    dra, dp = result[1.0]["dra"].row(4), result[1.0]["device-plugin"].row(4)
    assert dra["jobs"] == dp["jobs"] > 0  # the same job stream in both modes
    assert dra["one_card_pct"] == 100.0
    assert dp["one_card_pct"] < 100.0  # at full load the SoC-counting scheduler splits some


def test_every_job_is_placed_once() -> None:
    placements = node_placements(Path("/nonexistent/bench-cluster"))
    st = simulate(placements, "device-plugin", 0.85, 800, seed=1)
    assert sum(st.jobs.values()) == 800
