"""A plugin process's HTTP endpoints as the tests read them (/metrics, /healthz, /readyz):
one free loopback port, one plain HTTP/1.1 GET, the Prometheus samples of a text body."""

from __future__ import annotations

import asyncio
import socket

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def wait_http(
    port: int, path: str, status: int, timeout: float = 10.0, contains: str = ""
) -> str:
    """Poll until `path` answers `status` with `contains` in the body (nothing announces a
    listener or a state change over HTTP); returns the body."""
    last: object = None
    async with asyncio.timeout(timeout):
        while True:
            try:
                got, body = await http_get(port, path)
                if got == status and contains in body:
                    return body
                last = (got, body)
            except OSError as e:
                last = e
            await asyncio.sleep(0.05)
    raise AssertionError(last)  # pragma: no cover - the timeout raises first


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Sample values of metric `name`, keyed by their sorted labels."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out
