"""Run the real Pulumi CLI offline, the way ../shared/REAL_PARTS.md §3 says it works here.

- the CLI, its Python language host and pulumi-resource-kubernetes come from the tool cache
  (e2e/tools.sh; ``$QAIC_TOOLS_DIR``, default /var/cache/qaic-k8s/tools) and go first on
  PATH, so the CLI uses them as "ambient" plugins instead of downloading;
- ``PULUMI_HOME`` and the ``file://`` backend are scratch directories of the caller;
- the repo's virtualenv is activated through ``VIRTUAL_ENV``/``PATH`` (the language host
  built here ignores ``runtime.options.virtualenv``);
- ``PULUMI_CONFIG_PASSPHRASE`` is the one given (stacks here: see docs/provisioning.md);
- no cluster unless asked: the caller's ``KUBECONFIG`` is dropped and ``HOME`` is a scratch
  dir (no ~/.kube/config); pass ``extra_env={"KUBECONFIG": ...}`` for a test cluster.

Nothing here depends on pytest, so the cluster tests and scripts can reuse it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_DIR = Path(os.environ.get("QAIC_TOOLS_DIR", "/var/cache/qaic-k8s/tools"))
PULUMI_VERSION = os.environ.get("PULUMI_VERSION", "v3.276.0")
PULUMI_K8S_VERSION = os.environ.get("PULUMI_K8S_VERSION", "4.25.0")
#: The public passphrase of the example secrets in stacks/Pulumi.ultra-prod.yaml.
EXAMPLE_PASSPHRASE = "qaic-k8s-example"


def copy_checkout(dest: Path, root: Path = REPO_ROOT) -> Path:
    """The checkout's files as git sees them (tracked and new, not ignored), copied to
    ``dest``: the CLI may then rewrite stack files and render manifests there freely."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        src = root / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


def tool_bins(tools: Path = TOOLS_DIR) -> list[Path]:
    """The CLI's and the kubernetes provider's bin dirs; only finished builds (``.done``)."""
    dirs = [
        tools / f"pulumi-{PULUMI_VERSION}",
        tools / f"pulumi-resource-kubernetes-{PULUMI_K8S_VERSION}",
    ]
    return [d / "bin" for d in dirs if (d / ".done").is_file()]


def available(tools: Path = TOOLS_DIR) -> bool:
    return len(tool_bins(tools)) == 2


@dataclass
class PulumiCli:
    """One isolated Pulumi environment: own PULUMI_HOME, own file backend, own passphrase."""

    scratch: Path
    passphrase: str = ""
    cwd: Path = REPO_ROOT
    venv: Path = REPO_ROOT / ".venv"
    tools: Path = TOOLS_DIR
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = self.scratch / "pulumi-home"
        self.backend = self.scratch / "backend"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.scratch / "home").mkdir(parents=True, exist_ok=True)
        self.backend.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        path = [str(p) for p in tool_bins(self.tools)] + [str(self.venv / "bin")]
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith("PULUMI_")
            and k not in ("VIRTUAL_ENV", "PYTHONPATH", "KUBECONFIG", "HOME")
        }
        env.update({
            "PATH": os.pathsep.join([*path, os.environ.get("PATH", "/usr/bin:/bin")]),
            "VIRTUAL_ENV": str(self.venv),
            "HOME": str(self.scratch / "home"),
            "PULUMI_HOME": str(self.home),
            "PULUMI_BACKEND_URL": f"file://{self.backend}",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            # never reach out for a plugin: only the ambient ones on PATH (traffic stays here)
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
            "PULUMI_CONFIG_PASSPHRASE": self.passphrase,
            "NO_COLOR": "1",
            **self.extra_env,
        })
        return env

    def run(
        self, *args: str, cwd: Path | None = None, timeout: float = 600,
        env: Mapping[str, str] | None = None, check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """``pulumi ARGS`` (non-interactive, no colour); stdout and stderr captured as text."""
        full = {**self.env, **(env or {})}
        proc = subprocess.run(
            ["pulumi", *args, "--non-interactive", "--color=never"],
            cwd=cwd or self.cwd, env=full, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"pulumi {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def login(self) -> None:
        self.run("login", f"file://{self.backend}", check=True)

    def select(self, stack: str, create: bool = True, cwd: Path | None = None) -> None:
        args: Sequence[str] = ("stack", "select", stack, *(["--create"] if create else []))
        self.run(*args, cwd=cwd, check=True)
