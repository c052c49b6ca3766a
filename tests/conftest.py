"""Shared fixtures: a driver-accurate fake node, the kubelet simulator, the plugin process, a
short scratch directory and a real kube-apiserver + etcd per module."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from e2e.apiserver import ApiServer
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import DEMO_CARDS, FakeNode
from qaic_device_plugin.sim.process import PluginProcess, node_env

StartPlugin = Callable[..., Awaitable[PluginProcess]]


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    n = FakeNode(tmp_path / "node", DEMO_CARDS)
    n.write()
    return n


@pytest.fixture
def plugin_dir() -> Iterator[Path]:
    """A short path: Unix socket paths are limited to 107 characters, and pytest's tmp_path
    (/tmp/pytest-of-<user>/pytest-<run>/<test name>/) grows past that as runs accumulate."""
    d = Path(tempfile.mkdtemp(prefix="qaic-dp-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def dirs() -> Iterator[Path]:
    """A short scratch directory for sockets, CDI specs and checkpoints (Unix socket paths are
    limited to 107 characters)."""
    d = Path(tempfile.mkdtemp(prefix="qaic-t-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    """The real etcd + kube-apiserver of the tool cache, one per test module (a module's tests
    share its objects; modules that use it skip when the binaries are not built)."""
    work = Path(tempfile.mkdtemp(prefix="qaic-api-"))
    with ApiServer.start(work) as server:
        yield server
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
async def kubelet(plugin_dir: Path) -> AsyncIterator[KubeletSim]:
    async with KubeletSim(plugin_dir) as sim:
        yield sim


@pytest.fixture
async def start_plugin(
    request: pytest.FixtureRequest, plugin_dir: Path, tmp_path: Path
) -> AsyncIterator[StartPlugin]:
    """Start the real console script (on the `node` fixture unless given another node);
    every process is stopped at teardown."""
    started: list[PluginProcess] = []

    async def start(
        node: FakeNode | None = None,
        *,
        qaic_util: bool = True,
        args: list[str] | None = None,
        launcher: Sequence[str] = (),
        **env: str,
    ) -> PluginProcess:
        on = node if node is not None else request.getfixturevalue("node")
        p = PluginProcess(
            {**node_env(on, plugin_dir, qaic_util=qaic_util), **env},
            tmp_path / f"plugin-{len(started)}.log",
            args=args,
            launcher=launcher,
        )
        await p.start()
        started.append(p)
        return p

    yield start
    for p in started:
        if p.returncode is None:
            await p.stop()


@pytest.fixture
def sockets(plugin_dir: Path) -> Callable[[], list[str]]:
    def listing() -> list[str]:
        return sorted(p.name for p in plugin_dir.iterdir() if p.is_socket())

    return listing


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests start from defaults, whatever the developer's shell exports."""
    import os

    for k in list(os.environ):
        if k.startswith("QAIC_") or k == "ALLOWED_QAIC_DEVICE_SHARES":
            monkeypatch.delenv(k)
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under `make e2e` (QAIC_E2E_REQUIRED=1) the real tools must be there: an e2e test that
    skips for want of them fails instead, so CI never passes on tests that did not run."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and item.get_closest_marker("e2e") is not None
        and os.environ.get("QAIC_E2E_REQUIRED") == "1"
    ):
        report.outcome = "failed"
        report.longrepr = f"e2e test skipped under QAIC_E2E_REQUIRED=1: {report.longrepr}"
