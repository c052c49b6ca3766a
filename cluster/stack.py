"""The e2e stack applied to the running cluster with the real Pulumi CLI (e2e/pulumi_cli.py),
from a copy of the checkout so the committed stack file is never rewritten."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.pulumi_cli import PulumiCli, copy_checkout

from .cluster import Cluster, running
from .controlplane import ControlPlane
from .fleet import Fleet, NodeSpec, running_fleet


class UpFailed(AssertionError):
    """`pulumi up` exited non-zero; the message holds its error lines."""


@dataclass
class Stack:
    cli: PulumiCli
    scratch: Path
    config: dict[str, Any]
    name: str = "e2e"

    @classmethod
    def create(cls, cluster: ControlPlane, scratch: Path, name: str = "e2e",
               **changes: Any) -> Stack:
        """Stack `name` from the e2e stack's file plus `changes`; stacks of other names on
        the same cluster are other deployments of the project (e.g. one per node pool)."""
        checkout = copy_checkout(scratch / "checkout")
        cli = PulumiCli(scratch / "pulumi", cwd=checkout,
                        extra_env={"KUBECONFIG": str(cluster.kubeconfig)})
        cli.login()
        cli.select(name)
        config = yaml.safe_load((checkout / "stacks/Pulumi.e2e.yaml").read_text())
        stack = cls(cli, scratch, config, name)
        stack._write(changes)
        return stack

    @property
    def config_file(self) -> Path:
        return self.scratch / f"Pulumi.{self.name}.yaml"

    def _write(self, changes: dict[str, Any]) -> None:
        for key, value in changes.items():
            self.config["config"][f"qaic-k8s:{key}"] = value
        self.config_file.write_text(yaml.safe_dump(self.config))

    def up(self, **changes: Any) -> str:
        """One `pulumi up` with the stack file plus `changes`; raises UpFailed on failure."""
        self._write(changes)
        proc = self.run("up", "--yes")
        if proc.returncode != 0:
            errors = [ln for ln in proc.stdout.splitlines() if "error" in ln.lower()]
            raise UpFailed("pulumi up failed:\n" + "\n".join(errors[:40]) + "\n" + proc.stderr)
        return proc.stdout

    def preview(self, **changes: Any) -> subprocess.CompletedProcess[str]:
        """One `pulumi preview` with the stack file plus `changes` (kept for the next up)."""
        self._write(changes)
        return self.run("preview")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli.run(*args, "--stack", self.name, "--config-file", str(self.config_file),
                            timeout=900)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM turned into KeyboardInterrupt so pytest still tears the cluster down."""
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def cluster_for_tests(cdi: bool = False) -> Iterator[Cluster]:
    """`running()`, torn down on SIGTERM too."""
    with _sigterm_interrupts(), running(cdi=cdi) as c:
        yield c


@contextlib.contextmanager
def fleet_for_tests(specs: Sequence[NodeSpec]) -> Iterator[Fleet]:
    """`running_fleet()`, torn down on SIGTERM too."""
    with _sigterm_interrupts(), running_fleet(specs) as f:
        yield f
