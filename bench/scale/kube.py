"""A thin async client for the scale bench's own traffic: creating and deleting pods, listing,
watching and reading the API server's /metrics.

Why not lightkube (which the DRA publishers use, as the driver does): the bench is the load
generator, and it must not be what limits the figures: objects stay plain dicts (no model
parsing per event). HTTP/1.1 with a pool of connections, not HTTP/2: with watch streams open
on the one HTTP/2 connection, httpx2 took 55 s to read a 2.7 MB /metrics that curl read in
0.1 s, and a watch event can queue behind such a body the same way.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from bench.common.errors import BenchError

Json = dict[str, Any]
POOL = 48  # connections: the bench's concurrent creates (32), its watches, /metrics


class Kube:
    def __init__(self, url: str, token: str) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # self-signed, loopback
        self._http = httpx2.AsyncClient(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            verify=ctx,
            timeout=httpx2.Timeout(60.0),
            limits=httpx2.Limits(max_connections=POOL, max_keepalive_connections=POOL),
        )
        self.requests = 0  # every request the bench sent (its own share of the server's load)

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201),
                    **kw: Any) -> httpx2.Response:
        self.requests += 1
        r = await self._http.request(method, path, **kw)
        if r.status_code not in ok:
            raise BenchError(f"{method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r

    async def create(self, path: str, body: Json) -> Json:
        return dict((await self._call("POST", path, json=body)).json())

    async def delete(self, path: str) -> None:
        """Gone already (404) is fine: a pod may have been deleted by its node meanwhile."""
        await self._call("DELETE", path, ok=(200, 202, 404))

    async def delete_collection(self, path: str, **params: str) -> None:
        await self._call("DELETE", path, params=params)

    async def patch_status(self, path: str, patch: Json) -> Json:
        r = await self._call(
            "PATCH", path + "/status", content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )
        return dict(r.json())

    async def get(self, path: str) -> Json:
        return dict((await self._call("GET", path)).json())

    async def list(self, path: str, **params: str) -> Json:
        return dict((await self._call("GET", path, params=params)).json())

    async def text(self, path: str) -> str:
        return (await self._call("GET", path)).text

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[tuple[str, Json]]:
        """(type, object) from `resource_version` on, for good: a stream the server ends (its
        timeout) is reopened from the last version seen; BOOKMARKs only move that version."""
        rv = resource_version
        while True:
            params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
                      "timeoutSeconds": "600"}
            self.requests += 1
            async with self._http.stream(
                "GET", path, params=params, timeout=httpx2.Timeout(60.0, read=None)
            ) as r:
                if r.status_code != 200:
                    raise BenchError(f"watch {path}: HTTP {r.status_code}")
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        raise BenchError(f"watch {path}: {obj.get('message')}")
                    rv = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        yield kind, obj


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus counter's samples whose labels include `labels`."""
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, _, value = line.rpartition(" ")
        if all(w in head for w in want):
            total += float(value)
    return total


def requests_by_kind(text: str) -> dict[str, float]:
    """apiserver_request_total summed by `resource[/subresource] VERB` (codes and scopes
    together): which requests a phase made, the profile behind its CPU per pod."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        head, _, value = line.rpartition(" ")
        labels = dict(kv.split("=", 1) for kv in head[head.index("{") + 1:-1].split(",")
                      if "=" in kv)
        res = labels.get("resource", '""').strip('"')
        sub = labels.get("subresource", '""').strip('"')
        if not res:
            continue  # /readyz, /metrics and the like
        key = f"{res}{'/' + sub if sub else ''} {labels.get('verb', '').strip(chr(34))}"
        out[key] = out.get(key, 0.0) + float(value)
    return out
