"""The scale bench's phase figures (bench/scale/summary.py) from tracker records: creation ->
bound per job size, so a mode that makes 4-SoC jobs wait shows it apart from the 1-SoC mass."""

from __future__ import annotations

from bench.scale.summary import phase
from bench.scale.tracker import PodRec


def test_creation_to_bound_is_given_per_job_size() -> None:
    recs = [PodRec(size=1, phase="p", created=0.0, bound=0.1, cards=1),
            PodRec(size=1, phase="p", created=0.0, bound=0.3, cards=1),
            PodRec(size=2, phase="p", created=1.0, bound=2.0, cards=1),
            PodRec(size=4, phase="p", created=1.0, bound=9.0, cards=1),
            PodRec(size=4, phase="p", created=2.0, bound=None),
            PodRec(size=1, phase="other", created=0.0, bound=50.0)]
    out = phase(recs, "p", end=10.0, dra=True)
    assert out["create_to_bound_1soc_s"]["n"] == 2
    assert out["create_to_bound_1soc_s"]["max"] == 0.3
    assert out["create_to_bound_2soc_s"]["p50"] == 1.0
    assert out["create_to_bound_4soc_s"] == {"n": 1, "p50": 8.0, "p99": 8.0, "mean": 8.0,
                                             "max": 8.0}
    assert out["create_to_bound_s"]["n"] == 4
