"""The sample workloads (issue 13 items 6, 10, 12; issue 9 item 7): busybox-sh commands that
show what they were given and stop at once on SIGTERM, a Job that retries as the README
says, and fixed-name Pod/Job that are replaced, never updated, without skipAwait."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from infra_harness import ROOT, kubernetes_objects, run_components

from infra.components.workloads import Workloads, WorkloadsArgs
from infra.config import load_settings
from workloads.samples import ULTRA_JOB_BACKOFF_LIMIT, show_command

ALL_ON = {"workloadPodExample": "true", "workloadDeployment": "true",
          "workloadUltraJob": "true", "workloadImage": "localhost/qaic-sample:e2e"}


def commands() -> dict[str, list[str]]:
    s = load_settings("unit", ALL_ON)
    mocks, _ = run_components(lambda: {"c": Workloads("w", WorkloadsArgs(s)).created})
    out: dict[str, list[str]] = {}
    for obj in kubernetes_objects(mocks):
        if obj["kind"] in ("Pod", "Deployment", "Job"):
            spec = obj["spec"]
            pod = spec["template"]["spec"] if "template" in spec else spec
            out[obj["kind"]] = pod["containers"][0]["command"]
    return out


@pytest.fixture
def accel_root(tmp_path: Path) -> Path:
    (tmp_path / "dev" / "accel").mkdir(parents=True)
    (tmp_path / "dev" / "accel" / "accel3").write_text("")
    return tmp_path


def _sh(command: list[str], root: Path) -> list[str]:
    """The command as the container runs it, /dev/accel pointed at a fake dir."""
    script = command[2].replace("/dev/accel", str(root / "dev" / "accel"))
    return [(shutil.which("busybox") and "busybox") or "/bin/sh", *(["sh"] if shutil.which(
        "busybox") else []), "-c", script]


def test_every_sample_prints_its_devices_with_plain_sh(accel_root: Path) -> None:
    for kind, command in commands().items():
        assert command[:2] == ["/bin/sh", "-c"], kind
    job = commands()["Job"]
    proc = subprocess.run(_sh(job, accel_root), capture_output=True, text=True, timeout=10,
                          env={**os.environ, "QAIC_VISIBLE_DEVICES": "0,1,2,3"})
    assert proc.returncode == 0, proc.stderr
    assert "QAIC_VISIBLE_DEVICES=0,1,2,3" in proc.stdout and "accel3" in proc.stdout


@pytest.mark.parametrize("kind", ["Pod", "Deployment"])
def test_long_running_samples_exit_at_once_on_sigterm(accel_root: Path, kind: str) -> None:
    """`exec sleep infinity` as PID 1 ignored SIGTERM: every rollout waited 30 s."""
    proc = subprocess.Popen(_sh(commands()[kind], accel_root), stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "QAIC_VISIBLE_DEVICES": "3"})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "QAIC_VISIBLE_DEVICES=3"  # it is running
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 0
    assert time.monotonic() - start < 2.0


def test_show_command_only_stays_when_asked() -> None:
    assert "trap 'exit 0' TERM" in show_command(stay=True)[2]
    assert "trap" not in show_command(stay=False)[2]


def test_ultra_job_retries_as_the_readme_says() -> None:
    """With multiSocPolicy require a refused pod fails admission; the Job must retry."""
    s = load_settings("unit", {**ALL_ON, "multiSocPolicy": "require"})
    mocks, _ = run_components(lambda: {"c": Workloads("w", WorkloadsArgs(s)).created})
    job = next(o for o in kubernetes_objects(mocks) if o["kind"] == "Job")
    assert job["spec"]["backoffLimit"] == ULTRA_JOB_BACKOFF_LIMIT > 0
    assert "ttlSecondsAfterFinished" not in job["spec"]  # Pulumi owns its deletion
    readme = (ROOT / "README.md").read_text()
    assert f"backoffLimit: {ULTRA_JOB_BACKOFF_LIMIT}" in readme


def test_fixed_name_pod_and_job_are_replaced_delete_first_and_awaited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pulumi.runtime.mocks import MockMonitor

    seen: dict[str, Any] = {}
    original = MockMonitor.RegisterResource

    def record(self: MockMonitor, request: Any) -> Any:
        seen[request.name] = request
        return original(self, request)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(MockMonitor, "RegisterResource", record)
    s = load_settings("unit", ALL_ON)
    mocks, _ = run_components(lambda: {"c": Workloads("w", WorkloadsArgs(s)).created})
    for name in ("w-pod-example", "w-ultra-job"):
        assert list(seen[name].replaceOnChanges) == ["spec"], name
        assert seen[name].deleteBeforeReplace is True, name
    assert list(seen["w-deployment"].replaceOnChanges) == []  # a Deployment rolls
    for obj in kubernetes_objects(mocks):
        assert "pulumi.com/skipAwait" not in obj["metadata"].get("annotations", {})
