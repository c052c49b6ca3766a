"""Fixtures of the reliability suite: `report` writes each test's result line, pass or fail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from reliability_harness import RESULTS_PATH, Report

_OUTCOME = pytest.StashKey[str]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.stash[_OUTCOME] = rep.outcome
    return rep


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[Report]:
    r = Report(test=request.node.name)
    yield r
    line = r.line(request.node.stash.get(_OUTCOME, "error"))
    print(
        f"\nRELIABILITY {line['test']}: {line['outcome']}; {line['tried']}: {line['count']}, "
        f"lost {line['lost']}, {line['seconds']} s; "
        + ", ".join(f"{k}={v}" for k, v in r.details.items())
    )
    if RESULTS_PATH:
        with open(RESULTS_PATH, "a") as f:
            f.write(json.dumps(line, default=str) + "\n")
