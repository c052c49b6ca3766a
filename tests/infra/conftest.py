"""Put the repository root on sys.path so `infra` and `workloads` import as packages."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _fixed_git_sha(monkeypatch: pytest.MonkeyPatch) -> None:
    """A known SHA, so image tags are deterministic."""
    monkeypatch.setenv("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.delenv("PULUMI_CONFIG", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_SECRET_KEYS", raising=False)


@pytest.fixture(autouse=True)
def _event_loop_for_pulumi_mocks() -> None:
    """Pulumi's mocks ask `asyncio.get_event_loop()`, which raises once an asyncio test of the
    same pytest run (pytest-asyncio) has left this thread with no loop set: these tests then
    failed only when run after one (tests/test_footprint.py, say). Set one only then, and
    keep it, as a run of these tests alone would."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
