"""CPU profiles of kube-scheduler and kube-apiserver during a fill (`--profile`): the profile a
throughput miss is reported with. Both serve Go's /debug/pprof (profiling is their default;
the scheduler authenticates the bench's admin token through the API server); `go tool pprof`
turns each into the Kubernetes functions with the most cumulative CPU, kept in the JSON; the
raw profiles are written next to it."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import httpx2

SECONDS = 20
TOP = 25


async def _fetch(url: str, token: str, seconds: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    async with httpx2.AsyncClient(verify=ctx, timeout=seconds + 30) as http:
        r = await http.get(f"{url}/debug/pprof/profile", params={"seconds": str(seconds)},
                           headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.content


async def _top(path: Path) -> list[str]:
    """`go tool pprof -top -cum` of one profile, Kubernetes' own functions only (which plugin,
    which handler: the runtime's allocation and syscalls are everywhere), after the line
    that says how many samples there were."""
    go = shutil.which("go")
    if go is None:
        return ["(no go tool on PATH: raw profile kept)"]
    proc = await asyncio.create_subprocess_exec(
        go, "tool", "pprof", "-top", "-cum", "-nodecount=400", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    lines = out.decode(errors="replace").splitlines()
    head = [ln.strip() for ln in lines if ln.startswith("Duration:")]
    ours = [ln.strip() for ln in lines if "k8s.io/" in ln][:TOP]
    return head + ours


async def capture(targets: dict[str, str], token: str, prefix: Path,
                  delay: float = 3.0) -> dict[str, list[str]]:
    """After `delay` s, SECONDS of CPU profile of each target (name -> base URL), at once."""
    await asyncio.sleep(delay)
    names = list(targets)
    got = await asyncio.gather(*(_fetch(targets[n], token, SECONDS) for n in names),
                               return_exceptions=True)
    out: dict[str, list[str]] = {}
    for name, data in zip(names, got, strict=True):
        if isinstance(data, BaseException):
            out[name] = [f"profile failed: {data!r}"]
            continue
        path = prefix.with_name(f"{prefix.name}-{name}.pprof")
        path.write_bytes(data)
        out[name] = await _top(path)
    return out
