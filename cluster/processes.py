"""The cluster's long-running processes: spawned with a log file each, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .host import alive


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=self.env, start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None and alive(self.popen.pid)

    def stop(self, grace: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """`sig` to the PID, SIGKILL after `grace` s; always reaped (no zombie left behind)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, sig)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return f"== {self.name} ({self.log})\n" + "\n".join(text)


def tails(procs: Sequence[Proc], lines: int = 25) -> str:
    return "\n".join(p.tail(lines) for p in procs)
