"""Fixtures of the reliability suite: `report` writes each test's result line, pass or fail;
`plugin_dir` is overridden with a short path (see below)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
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


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    """A short plugin dir. gRPC refuses Unix socket paths over 105 characters, and tmp_path
    (/tmp/pytest-of-root/pytest-NNN/<30 chars of test name>N/...) crosses that with
    `qualcomm.com_qaic-ultra.sock` once pytest's run counter reaches three digits."""
    d = Path(tempfile.mkdtemp(prefix="qrel-"))
    (d / "device-plugins").mkdir()
    yield d / "device-plugins"
    shutil.rmtree(d, ignore_errors=True)
