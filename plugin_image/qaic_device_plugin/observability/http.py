"""`/metrics`, `/healthz` (liveness) and `/readyz` (readiness) from the plugin's own event loop.

Deliberately not prometheus_client's thread server: served from the loop that runs the
plugin, a wedged loop stops answering `/healthz` and the liveness probe restarts us, which a
happy side thread would hide. Each connection gets one bounded request head (size limit and
deadline) and one response, then is closed, so a slow, silent or garbage client costs at
most one small buffer until its deadline and never holds up another client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

HEAD_LIMIT = 8192  # bytes of request line + headers; Prometheus and kubelet send a few hundred
HEAD_TIMEOUT = 5.0  # seconds to deliver the head; kubelet's probe gives up after 1 s anyway
WRITE_TIMEOUT = 5.0  # seconds for a client to take the response
LINGER_TIMEOUT = 1.0  # after an error reply, seconds to discard what the client still sends
LINGER_LIMIT = 65536  # ... and at most this many bytes
MAX_CONNECTIONS = 64  # beyond this answer 503 at once; beyond twice this, reset the connection
TEXT = "text/plain; charset=utf-8"
METHODS = ("GET", "HEAD")  # RFC 9110 9.1: a server supporting GET supports HEAD

BIND_BACKOFF = (0.5, 5.0)  # seconds: first retry of a port we cannot bind, and the cap

Response = tuple[HTTPStatus, str, bytes, dict[str, str]]
log = logging.getLogger(__name__)


def _text(status: HTTPStatus, body: str, **headers: str) -> Response:
    return status, TEXT, body.encode(), headers


class _Handler:
    def __init__(
        self,
        registry: CollectorRegistry,
        alive: Callable[[], bool],
        reason: Callable[[], str] | None,
        head_timeout: float,
        max_connections: int,
        unready: Callable[[], str | None] | None = None,
    ) -> None:
        self._registry = registry
        self._alive = alive
        self._reason = reason
        self._unready = unready
        self._head_timeout = head_timeout
        self._max_connections = max_connections
        self._active = 0
        self._routes: dict[str, Callable[[], Response]] = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }

    def _metrics(self) -> Response:
        return HTTPStatus.OK, CONTENT_TYPE_PLAIN_0_0_4, generate_latest(self._registry), {}

    def _healthz(self) -> Response:
        try:
            ok = self._alive()
            why = "" if ok or self._reason is None else self._reason()
        except Exception as e:  # a broken check is a failed probe, not a dead server
            ok, why = False, f"liveness check raised {e!r}"
        if ok:
            return _text(HTTPStatus.OK, "ok\n")
        return _text(HTTPStatus.SERVICE_UNAVAILABLE, f"not alive: {why or 'unspecified'}\n")

    def _readyz(self) -> Response:
        try:
            why = self._unready() if self._unready is not None else None
        except Exception as e:  # a broken check is a failed probe, not a dead server
            why = f"readiness check raised {e!r}"
        if why is None:
            return _text(HTTPStatus.OK, "ready\n")
        return _text(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {why}\n")

    async def _read_head(self, reader: asyncio.StreamReader) -> Response | bytes | None:
        """The request head, or the error response to send, or None when the client left."""
        try:
            async with asyncio.timeout(self._head_timeout):
                return await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _text(HTTPStatus.REQUEST_TIMEOUT, "request head not received in time\n")
        except asyncio.LimitOverrunError:
            return _text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def _route(self, head: bytes) -> tuple[Response, bool]:
        """The response, and whether it carries a body (not for HEAD)."""
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(HTTPStatus.BAD_REQUEST, "malformed request line\n"), True
        method, target = parts[0], parts[1]
        handler = self._routes.get(target.split("?", 1)[0])
        if handler is None:
            return _text(
                HTTPStatus.NOT_FOUND, "not found; try /metrics, /healthz or /readyz\n"
            ), True
        if method not in METHODS:
            return (
                _text(
                    HTTPStatus.METHOD_NOT_ALLOWED, "method not allowed\n", Allow=", ".join(METHODS)
                ),
                True,
            )
        return handler(), method != "HEAD"

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= 2 * self._max_connections:
            writer.transport.abort()  # a flood: not even a reply
            return
        self._active += 1
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            # Server shutdown. Nobody awaits this task, and Python 3.11's stream callback logs
            # a cancelled one as an error, so end quietly instead of re-raising.
            writer.transport.abort()
        finally:
            self._active -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._active > self._max_connections:
                response, body = _text(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n"), True
            else:
                head = await self._read_head(reader)
                if head is None:
                    return
                response, body = (head, True) if isinstance(head, tuple) else self._route(head)
            await _send(writer, response, body)
            if response[0] >= 400:
                await _linger(reader, writer)
        finally:
            await _close(writer)


async def _bounded(aw: Awaitable[None], writer: asyncio.StreamWriter) -> None:
    """Await a write-side step; a client that will not take our bytes is cut off."""
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await aw
    except (TimeoutError, ConnectionError):
        writer.transport.abort()


async def _send(writer: asyncio.StreamWriter, response: Response, with_body: bool) -> None:
    status, content_type, body, extra = response
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Cache-Control": "no-store",
        "Connection": "close",
        **extra,
    }
    head = f"HTTP/1.1 {status.value} {status.phrase}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    writer.write(head.encode("latin-1") + b"\r\n" + (body if with_body else b""))
    await _bounded(writer.drain(), writer)


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Discard unread input (bounded) before closing: closing a socket with unread data
    sends a reset, which can destroy our error reply before the client reads it."""
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
    budget = LINGER_LIMIT
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(LINGER_TIMEOUT):
            while budget > 0 and (chunk := await reader.read(min(budget, 4096))):
                budget -= len(chunk)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await _bounded(writer.wait_closed(), writer)


async def serve_http(
    host: str,
    port: int,
    registry: CollectorRegistry,
    alive: Callable[[], bool],
    *,
    reason: Callable[[], str] | None = None,
    unready: Callable[[], str | None] | None = None,
    head_limit: int = HEAD_LIMIT,
    head_timeout: float = HEAD_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> asyncio.Server:
    """Listen on host:port (host "": every address; port 0: any free port, read it from
    `server.sockets`).

    `/healthz` answers 200 while `alive()` is true, else 503 with `reason()` (if given) in
    the body. `/readyz` answers 200 while `unready()` returns None, else 503 with what it
    returned (always 200 without `unready`). The caller owns the server:
    `server.close(); await server.wait_closed()`.
    """
    handler = _Handler(registry, alive, reason, head_timeout, max_connections, unready)
    return await asyncio.start_server(handler, host or None, port, limit=head_limit)


async def serve_http_forever(
    host: str,
    port: int,
    registry: CollectorRegistry,
    alive: Callable[[], bool],
    *,
    reason: Callable[[], str] | None = None,
    unready: Callable[[], str | None] | None = None,
    backoff: tuple[float, float] = BIND_BACKOFF,
) -> None:
    """`serve_http` until cancelled. An address that cannot be bound (the port held by
    another process, the address not on the node yet) is logged once and retried with
    capped exponential backoff: these endpoints are optional, so they never take device
    serving down with them."""
    delay, failures = backoff[0], 0
    where = {"address": host or "*", "port": port}
    while True:
        try:
            server = await serve_http(host, port, registry, alive, reason=reason, unready=unready)
            break
        except OSError as e:
            if failures == 0:
                log.error(
                    "cannot serve /metrics, /healthz and /readyz; still serving devices, "
                    "retrying with backoff",
                    extra={
                        "event": "metrics_bind_failed",
                        **where,
                        "error": e.strerror or str(e),
                        "retry_max_s": backoff[1],
                    },
                )
            failures += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, backoff[1])
    log.info(
        "serving /metrics, /healthz and /readyz",
        extra={"event": "metrics_serving", **where, "attempts": failures + 1},
    )
    try:
        await server.serve_forever()
    finally:
        server.close()
        await server.wait_closed()
