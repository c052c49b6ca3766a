"""The real Pulumi CLI (3.276, Python language host, pulumi-resource-kubernetes 4.25) on the
committed stacks: what issue 9 items 1-4, 6 and 7 found, each checked with the real engine.

The tools come from the cache e2e/tools.sh fills (`make e2e`). pulumi-docker-build's provider
cannot be had here, so a stack that builds the image (dev, ultra-prod) is previewed with the
build replaced by a pinned image: a copy of its stack file with ``imageRef`` set and
``push``/``loadImage`` removed, passed with ``--config-file``. Everything runs in a copy of
the checkout, with its own PULUMI_HOME and file backend, and without any kubeconfig, so no
cluster is ever contacted.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.pulumi_cli import EXAMPLE_PASSPHRASE, REPO_ROOT, PulumiCli, available, copy_checkout

pytestmark = pytest.mark.e2e

STACKS = sorted(p.name[len("Pulumi."):-len(".yaml")]
                for p in (REPO_ROOT / "stacks").glob("Pulumi.*.yaml"))
PINNED = "localhost/qaic-device-plugin:preview"
DOCS = (REPO_ROOT / "docs" / "provisioning.md").read_text()


def passphrase(stack: str) -> str:
    """ultra-prod holds the example secret; stacks without secrets use the empty one."""
    return EXAMPLE_PASSPHRASE if stack == "ultra-prod" else ""


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's files as git sees them (tracked and new, not ignored), copied."""
    if not available():
        if os.environ.get("CI") == "true":
            pytest.fail("the Pulumi CLI tools are not built: run e2e/tools.sh")
        pytest.skip("the Pulumi CLI tools are not built (e2e/tools.sh)")
    return copy_checkout(tmp_path_factory.mktemp("checkout"))


def cli(tmp: Path, checkout: Path, stack: str) -> PulumiCli:
    c = PulumiCli(tmp, passphrase=passphrase(stack), cwd=checkout)
    c.login()
    return c


def stack_config(checkout: Path, stack: str, **changes: Any) -> dict[str, Any]:
    path = checkout / "stacks" / f"Pulumi.{stack}.yaml"
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    config = data["config"]
    for key, value in changes.items():
        if value is None:
            config.pop(f"qaic-k8s:{key}", None)
        else:
            config[f"qaic-k8s:{key}"] = value
    return data


def pinned(checkout: Path, stack: str, **changes: Any) -> dict[str, Any]:
    """The stack with the image build replaced by a pinned image (see the module doc)."""
    config = stack_config(checkout, stack)["config"]
    if "qaic-k8s:imageRef" in config:
        return stack_config(checkout, stack, **changes)
    return stack_config(checkout, stack, imageRef=PINNED, push=None, loadImage=None, **changes)


def config_file(tmp: Path, name: str, data: dict[str, Any]) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def one_output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def test_select_create_leaves_every_stack_file_as_committed(
    checkout: Path, tmp_path: Path
) -> None:
    """Item 4 (and 2): committed stack files are in the CLI's own form with real salts."""
    before = {s: (checkout / "stacks" / f"Pulumi.{s}.yaml").read_bytes() for s in STACKS}
    for stack in STACKS:
        c = cli(tmp_path / stack, checkout, stack)
        c.select(stack)
        assert (checkout / "stacks" / f"Pulumi.{stack}.yaml").read_bytes() == before[stack]
    # The example secret opens with the documented public passphrase.
    c = cli(tmp_path / "ultra-prod", checkout, "ultra-prod")
    got = c.run("config", "get", "qaic-k8s:registryPassword", "--stack", "ultra-prod", check=True)
    assert got.stdout.strip() == "example-placeholder-not-a-token"
    assert f"PULUMI_CONFIG_PASSPHRASE={EXAMPLE_PASSPHRASE}" in DOCS


@pytest.mark.parametrize("stack", STACKS)
def test_every_committed_stack_previews(checkout: Path, tmp_path: Path, stack: str) -> None:
    """Items 1 and 2: `pulumi preview` works for every stack as committed."""
    c = cli(tmp_path, checkout, stack)
    c.select(stack)
    data = pinned(checkout, stack)
    proc = c.run("preview", "--stack", stack, "--config-file", config_file(tmp_path, stack, data))
    assert proc.returncode == 0, one_output(proc)
    assert "to create" in proc.stdout


CLI_TYPE_ERRORS = [
    ("skuBasedResources", "maybe",
     "error: validating stack config: Stack 'dev' with configuration key 'skuBasedResources' "
     "must be of type 'boolean'"),
    ("metricsPort", "ninety",
     "error: validating stack config: Stack 'dev' with configuration key 'metricsPort' "
     "must be of type 'integer'"),
    ("tolerations", "qualcomm.com/qaic:NoSchedule",
     "error: validating stack config: Stack 'dev' with configuration key 'tolerations' "
     "must be of type 'array<string>'"),
]


@pytest.mark.parametrize(("key", "value", "message"), CLI_TYPE_ERRORS,
                         ids=[k for k, _, _ in CLI_TYPE_ERRORS])
def test_wrongly_typed_keys_fail_with_the_documented_cli_message(
    checkout: Path, tmp_path: Path, key: str, value: str, message: str
) -> None:
    """Item 3: the CLI type-checks declared keys first; the docs show exactly its line."""
    c = cli(tmp_path, checkout, "dev")
    c.select("dev")
    data = pinned(checkout, "dev", **{key: value})
    proc = c.run("preview", "--stack", "dev", "--config-file", config_file(tmp_path, "t", data))
    assert proc.returncode != 0
    assert message in one_output(proc)
    assert message[len("error: "):] in DOCS


def test_program_errors_are_one_sentence_and_nothing_else(
    checkout: Path, tmp_path: Path
) -> None:
    """Item 3: our own error reads as a sentence, and the CLI adds no second error line."""
    c = cli(tmp_path, checkout, "dev")
    c.select("dev")
    data = pinned(checkout, "dev", metricPort="9410")
    proc = c.run("preview", "--stack", "dev", "--config-file", config_file(tmp_path, "t", data))
    out = one_output(proc)
    assert proc.returncode != 0
    line = ("error: stack 'dev': 'qaic-k8s:metricPort' is not a known key; "
            "did you mean 'qaic-k8s:metricsPort'?")
    assert line in out
    assert "unhandled error" not in out and "Traceback" not in out
    # the Diagnostics section: this one error line and no other
    assert [ln.strip() for ln in out.splitlines() if ln.strip().startswith("error:")] == [line]
    assert line[len("error: "):] in DOCS


@pytest.mark.parametrize("where", ["root", "infra", "elsewhere"])
def test_dev_up_renders_into_the_documented_dir_whatever_the_cwd(
    checkout: Path, tmp_path: Path, where: str
) -> None:
    """Items 6 and 7: manifests land in <repo>/out/manifests/dev and carry no Pulumi-only
    annotation, wherever `pulumi up` is started."""
    out = checkout / "out" / "manifests" / "dev"
    if out.exists():
        subprocess.run(["rm", "-rf", str(checkout / "out")], check=True)
    c = cli(tmp_path, checkout, "dev")
    c.select("dev")
    args = ["up", "--yes", "--stack", "dev", "--config-file",
            config_file(tmp_path, "dev", pinned(checkout, "dev"))]
    cwd = {"root": checkout, "infra": checkout / "infra", "elsewhere": tmp_path}[where]
    if where == "elsewhere":
        args = ["--cwd", str(checkout), *args]
    proc = c.run(*args, cwd=cwd)
    assert proc.returncode == 0, one_output(proc)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.yaml"))
    assert "1-manifest/apps_v1-daemonset-qaic-system-qaic-device-plugin.yaml" in files
    assert any(re.fullmatch(r"1-manifest/v1-pod-qaic-workloads-qaic-pod-example-[0-9a-f]{8}\.yaml",
                            f) for f in files), files
    for path in out.rglob("*.yaml"):
        assert "pulumi.com/" not in path.read_text(), path
    assert not (checkout / "infra" / "out").exists()
    state = c.run("stack", "export", "--stack", "dev", check=True).stdout
    dirs = {r["inputs"].get("renderYamlToDirectory") for r in json.loads(state)["deployment"]
            ["resources"] if r["type"] == "pulumi:providers:kubernetes"}
    assert dirs == {str(out)}


def test_a_config_change_plans_replacing_the_sample_pod(checkout: Path, tmp_path: Path) -> None:
    """Issue 13 item 10, the part the engine decides without a cluster: after `up`, switching
    SKU mode plans the fixed-name sample Pod as a replacement (not an in-place update the API
    server would refuse) and adds the admission policy. The cluster run is the lead's e2e."""
    c = cli(tmp_path, checkout, "dev")
    c.select("dev")
    base = config_file(tmp_path, "dev", pinned(checkout, "dev"))
    assert c.run("up", "--yes", "--stack", "dev", "--config-file", base).returncode == 0
    switched = config_file(tmp_path, "sku", pinned(checkout, "dev", skuBasedResources="true"))
    proc = c.run("preview", "--json", "--stack", "dev", "--config-file", switched)
    assert proc.returncode == 0, one_output(proc)
    steps = {s["urn"].split("::")[-1]: s["op"] for s in json.loads(proc.stdout)["steps"]}
    assert steps["qaic-samples-pod-example"] == "replace"
    assert steps["qaic-device-plugin-daemonset"] == "update"
    assert steps["qaic-device-plugin-one-resource-policy"] == "create"
