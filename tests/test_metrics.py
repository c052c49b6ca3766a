"""Metrics: driven by real node states from the fake node and a real kubelet simulator, read
back through prometheus_client's own exposition parser."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families

from qaic_device_plugin import __version__
from qaic_device_plugin.deviceplugin.backend import QaicResource
from qaic_device_plugin.kubelet.manager import ManagerObserver, PluginManager
from qaic_device_plugin.observability.http import serve_http
from qaic_device_plugin.observability.metrics import REACTION_BUCKETS, Metrics
from qaic_device_plugin.qaic.health import Signal
from qaic_device_plugin.qaic.inventory import Inventory, NodeState, SocState
from qaic_device_plugin.qaic.model import QaicUtilEntry
from qaic_device_plugin.qaic.resources import resource_name
from qaic_device_plugin.qaic.sku import SKU_TYPE_TEXT
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode

ULTRA = "qualcomm.com/qaic-ultra"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(m: Metrics) -> Samples:
    text = generate_latest(m.registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float:
    return samples(m)[(name, frozenset(labels.items()))]


def ready(node: FakeNode) -> list[QaicUtilEntry]:
    """What qaic-util reports for the fake node, so SKUs are facts, not topology guesses."""
    return [QaicUtilEntry(s.qid, s.pci_address, "Ready", SKU_TYPE_TEXT[s.sku]) for s in node.socs]


def by_resource(state: NodeState) -> dict[str, list[SocState]]:
    """The app's grouping in SKU mode."""
    groups: dict[str, list[SocState]] = {}
    for s in state.socs:
        groups.setdefault(resource_name(s.sku.sku), []).append(s)
    return groups


class Driver:
    """Scan the fake node and feed each state to Metrics, as the app's refresher does."""

    def __init__(self, node: FakeNode, metrics: Metrics) -> None:
        self.node = node
        self.metrics = metrics
        self.inventory = Inventory(node.sysfs_root, node.dev_root, {})
        self.state: NodeState | None = None

    def scan(
        self, group: Callable[[NodeState], Mapping[str, Sequence[SocState]]] = by_resource
    ) -> NodeState:
        new = self.inventory.scan(ready(self.node))
        self.metrics.observe_state(self.state, new, group(new))
        self.state = new
        return new


def ultra_soc(node: FakeNode) -> str:
    return next(s.pci_address for s in node.socs if s.sku.value == "ultra")


def hide_accel(node: FakeNode, pci: str) -> Callable[[], None]:
    """The SoC's accel entry leaves sysfs while its PCI function stays (a reset); returns
    the undo."""
    link = node.sysfs_root / "class" / "accel" / f"accel{node.soc(pci).accel_index}"
    target = os.readlink(link)
    link.unlink()
    return lambda: os.symlink(target, link)


def test_socs_per_resource_and_health(node: FakeNode) -> None:
    m = Metrics()
    Driver(node, m).scan()
    for resource, healthy in [
        (ULTRA, 8),
        ("qualcomm.com/qaic-std", 1),
        ("qualcomm.com/qaic-pro", 1),
    ]:
        assert value(m, "qaic_socs", resource=resource, health="healthy") == healthy
        assert value(m, "qaic_socs", resource=resource, health="unhealthy") == 0


def test_device_node_flip_and_recover(node: FakeNode) -> None:
    m = Metrics()
    d = Driver(node, m)
    d.scan()
    pci = ultra_soc(node)
    node.remove_device_node(pci)
    d.scan()
    d.scan()  # still unhealthy: not a new transition
    assert value(m, "qaic_socs", resource=ULTRA, health="healthy") == 7
    assert value(m, "qaic_socs", resource=ULTRA, health="unhealthy") == 1
    assert value(m, "qaic_health_transitions_total", signal="device-node", to="unhealthy") == 1
    assert value(m, "qaic_health_transitions_total", signal="device-node", to="healthy") == 0
    node.restore_device_node(pci)
    d.scan()
    assert value(m, "qaic_socs", resource=ULTRA, health="healthy") == 8
    assert value(m, "qaic_health_transitions_total", signal="device-node", to="healthy") == 1


def test_counts_once_per_signal_of_the_findings(node: FakeNode) -> None:
    m = Metrics()
    d = Driver(node, m)
    d.scan()
    pci = ultra_soc(node)
    undo = hide_accel(node, pci)
    node.remove_device_node(pci)
    state = d.scan()
    signals = {f.signal for f in state.by_pci()[pci].findings}
    assert {Signal.SYSFS, Signal.DEVICE_NODE} <= signals
    for signal in signals:
        assert value(m, "qaic_health_transitions_total", signal=signal.value, to="unhealthy") == 1
    undo()
    node.restore_device_node(pci)
    assert d.scan().by_pci()[pci].healthy
    for signal in signals:
        assert value(m, "qaic_health_transitions_total", signal=signal.value, to="healthy") == 1
    assert value(m, "qaic_socs", resource=ULTRA, health="healthy") == 8


def test_first_sight_and_removal_are_not_transitions(node: FakeNode) -> None:
    m = Metrics()
    d = Driver(node, m)
    node.remove_device_node(ultra_soc(node))
    d.scan()  # unhealthy from the start
    assert value(m, "qaic_socs", resource=ULTRA, health="unhealthy") == 1
    std = next(s.pci_address for s in node.socs if s.sku.value == "std")
    node.remove_soc(std)
    d.scan()
    totals = [v for (n, _), v in samples(m).items() if n == "qaic_health_transitions_total"]
    assert totals and not any(totals)
    # The std resource lost its last SoC: it reads 0 instead of vanishing.
    assert value(m, "qaic_socs", resource="qualcomm.com/qaic-std", health="healthy") == 0
    assert value(m, "qaic_socs", resource="qualcomm.com/qaic-std", health="unhealthy") == 0


def test_unreadable_signal_is_counted_each_scan(node: FakeNode) -> None:
    m = Metrics()
    d = Driver(node, m)
    pci = ultra_soc(node)
    dev = node.device_node(pci)
    dev.unlink()
    os.symlink(dev.name, dev)  # a loop: stat fails with ELOOP, which is not "missing"
    assert value(m, "qaic_signal_read_failures_total", signal="device-node") == 0
    d.scan()
    d.scan()
    assert value(m, "qaic_signal_read_failures_total", signal="device-node") == 2
    assert value(m, "qaic_socs", resource=ULTRA, health="healthy") == 8  # unreadable != unhealthy
    m.signal_unreadable(Signal.QAIC_UTIL)
    assert value(m, "qaic_signal_read_failures_total", signal="qaic-util") == 1


def test_series_exist_before_any_event() -> None:
    s = samples(Metrics())
    for signal in Signal:
        assert s[("qaic_signal_read_failures_total", frozenset({("signal", signal.value)}))] == 0
        for to in ("healthy", "unhealthy"):
            key = frozenset({("signal", signal.value), ("to", to)})
            assert s[("qaic_health_transitions_total", key)] == 0
    assert s[("qaic_device_plugin_info", frozenset({("version", __version__)}))] == 1
    assert s[("qaic_kubelet_reaction_seconds_count", frozenset())] == 0


def test_registrations_failures_and_reaction_histogram() -> None:
    m = Metrics(version="9.9.9")
    assert isinstance(m, ManagerObserver)
    m.registered(ULTRA, first=True, reaction_seconds=0.5)  # start-up, not a reaction
    m.registered(ULTRA, first=False, reaction_seconds=0.004)
    m.registered(ULTRA, first=False, reaction_seconds=3.0)
    m.registered(ULTRA, first=False, reaction_seconds=None)
    m.registration_failed(ULTRA, "UNAVAILABLE: failed to connect to all addresses")
    m.registration_failed(ULTRA, "something odd: with a 0000:35:00.0 in it")
    assert value(m, "qaic_registrations_total", resource=ULTRA, kind="first") == 1
    assert value(m, "qaic_registrations_total", resource=ULTRA, kind="re") == 3
    assert value(m, "qaic_registration_failures_total", resource=ULTRA, code="UNAVAILABLE") == 1
    assert value(m, "qaic_registration_failures_total", resource=ULTRA, code="OTHER") == 1
    assert value(m, "qaic_kubelet_reaction_seconds_count") == 2
    assert value(m, "qaic_kubelet_reaction_seconds_sum") == pytest.approx(3.004)
    assert value(m, "qaic_kubelet_reaction_seconds_bucket", le="0.0025") == 0
    assert value(m, "qaic_kubelet_reaction_seconds_bucket", le="0.005") == 1
    assert value(m, "qaic_kubelet_reaction_seconds_bucket", le="5.0") == 2
    assert value(m, "qaic_device_plugin_info", version="9.9.9") == 1
    assert REACTION_BUCKETS[0] == 0.001 and REACTION_BUCKETS[-1] == 5.0


def test_allocations_and_cross_card() -> None:
    m = Metrics()
    m.on_allocate(ULTRA, 4)
    m.on_allocate(ULTRA, 1)
    m.on_cross_card(ULTRA, "preferred")
    m.on_cross_card(ULTRA, "allocate")
    m.on_cross_card(ULTRA, "allocate")
    assert value(m, "qaic_allocations_total", resource=ULTRA) == 2
    assert value(m, "qaic_allocated_socs_total", resource=ULTRA) == 5
    assert value(m, "qaic_cross_card_total", resource=ULTRA, rpc="preferred") == 1
    assert value(m, "qaic_cross_card_total", resource=ULTRA, rpc="allocate") == 2
    with pytest.raises(ValueError, match="unknown rpc"):
        m.on_cross_card(ULTRA, "GetPreferredAllocation")


_PCI_LIKE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def test_label_values_stay_bounded(node: FakeNode) -> None:
    """After every kind of event, no label carries a PCI address, a path or error text."""
    m = Metrics()
    d = Driver(node, m)
    d.scan()
    pci = ultra_soc(node)
    node.remove_device_node(pci)
    d.scan()
    node.restore_device_node(pci)
    d.scan()
    m.registration_failed(ULTRA, f"UNKNOWN: {pci} /dev/accel/accel3")
    m.on_allocate(ULTRA, 2)
    m.slice_publish_failed("422")
    m.slice_publish_failed("unreachable")
    m.slices_synced(applied=2, deleted=1)
    allowed = {
        "resource": {ULTRA, "qualcomm.com/qaic-std", "qualcomm.com/qaic-pro"},
        "health": {"healthy", "unhealthy"},
        "to": {"healthy", "unhealthy"},
        "signal": {s.value for s in Signal},
        "rpc": {"allocate", "preferred"},
        "kind": {"first", "re"},
        "op": {"apply", "delete"},  # DRA mode's slice writes
        "version": {__version__},
    }
    for (_, labels), _v in samples(m).items():
        for k, v in labels:
            assert not _PCI_LIKE.search(v) and "/dev" not in v, (k, v)
            if k in allowed:
                assert v in allowed[k], (k, v)
            elif k == "code":
                assert re.fullmatch(r"[A-Z_]+", v)
            elif k == "status":  # DRA slice publish failures: an HTTP status
                assert re.fullmatch(r"\d{3}|unreachable|other", v), v
            else:
                assert k == "le", k


async def test_manager_and_backend_report_through_metrics(node: FakeNode, tmp_path: Path) -> None:
    """Real PluginManager and QaicResource with Metrics wired in, against the kubelet simulator:
    registrations, a kubelet restart's reaction time and cross-card sets all show up."""
    m = Metrics()
    d = Driver(node, m)
    state = d.scan()
    plugins = tmp_path / "plugins"
    resources = by_resource(state)
    backends = {name: QaicResource(name, on_cross_card=m.on_cross_card) for name in resources}
    for name, res in backends.items():
        await res.update(resources[name])
    async with KubeletSim(plugins) as kubelet:
        manager = PluginManager(plugins, observer=m, backoff=(0.01, 0.2))
        await manager.start()
        try:
            await manager.set_backends(backends)
            for name in backends:
                await kubelet.wait_registered(name)

            async def counted(name: str, want: float) -> None:
                async with asyncio.timeout(10):
                    while True:
                        got = samples(m).get((name, frozenset()), 0.0)
                        if got >= want:
                            return
                        await asyncio.sleep(0.01)

            await kubelet.restart()
            for name in backends:
                await kubelet.wait_registered(name, count=2)
            await counted("qaic_kubelet_reaction_seconds_count", len(backends))
            for name in backends:
                assert value(m, "qaic_registrations_total", resource=name, kind="first") == 1
                assert value(m, "qaic_registrations_total", resource=name, kind="re") == 1
            assert value(m, "qaic_kubelet_reaction_seconds_bucket", le="+Inf") == len(backends)

            await kubelet.wait_devices(ULTRA, healthy=8)
            ids = sorted(s.soc.pci_address for s in resources[ULTRA])
            await kubelet.preferred(ULTRA, ids, [], 5)  # 5 SoCs cannot fit on one Ultra card
            assert value(m, "qaic_cross_card_total", resource=ULTRA, rpc="preferred") == 1
            by_card: dict[str, list[str]] = {}
            for s in resources[ULTRA]:
                by_card.setdefault(s.soc.card_id, []).append(s.soc.pci_address)
            a, b = sorted(by_card.values())
            await kubelet.allocate(ULTRA, [a[0], b[0]])
            assert value(m, "qaic_cross_card_total", resource=ULTRA, rpc="allocate") == 1
            await kubelet.allocate(ULTRA, a)  # one card: not counted
            assert value(m, "qaic_cross_card_total", resource=ULTRA, rpc="allocate") == 1
        finally:
            await manager.close()
            for res in backends.values():
                await res.close()


# -- the HTTP endpoint -----------------------------------------------------------------------


class Endpoint:
    def __init__(self, port: int, metrics: Metrics) -> None:
        self.port = port
        self.metrics = metrics
        self.alive: bool | Exception = True
        self.why = "refresher loop died"

    def check(self) -> bool:
        if isinstance(self.alive, Exception):
            raise self.alive
        return self.alive


Reply = tuple[int, dict[str, str], bytes]


def parse_reply(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {k.lower(): v for k, v in headers.items()}
    assert int(headers["content-length"]) == len(body) or not body
    return int(status), headers, body


async def exchange(port: int, raw: bytes, timeout: float = 5.0) -> Reply:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(timeout):
            data = await reader.read()  # the server closes after one response
        return parse_reply(data)
    finally:
        writer.close()


async def get(port: int, path: str, method: str = "GET") -> Reply:
    return await exchange(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


@pytest.fixture
async def endpoint(node: FakeNode) -> AsyncIterator[Endpoint]:
    m = Metrics()
    Driver(node, m).scan()
    holder: list[Endpoint] = []
    server = await serve_http(
        "127.0.0.1",
        0,
        m.registry,
        lambda: holder[0].check(),
        reason=lambda: holder[0].why,
        head_timeout=0.5,
        max_connections=4,
    )
    holder.append(Endpoint(server.sockets[0].getsockname()[1], m))
    yield holder[0]
    server.close()
    await server.wait_closed()


async def test_metrics_over_http(endpoint: Endpoint) -> None:
    status, headers, body = await get(endpoint.port, "/metrics?x=1")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_PLAIN_0_0_4
    assert headers["connection"] == "close"
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    socs = {
        (s.labels["resource"], s.labels["health"]): s.value for s in families["qaic_socs"].samples
    }
    assert socs[(ULTRA, "healthy")] == 8
    assert "qaic_health_transitions" in families and "qaic_device_plugin_info" in families
    head_status, head_headers, head_body = await get(endpoint.port, "/metrics", "HEAD")
    assert head_status == 200 and head_body == b""
    assert int(head_headers["content-length"]) > 0


async def test_healthz_follows_alive(endpoint: Endpoint) -> None:
    status, headers, body = await get(endpoint.port, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    endpoint.alive = False
    status, _, body = await get(endpoint.port, "/healthz")
    assert status == 503 and body == b"not alive: refresher loop died\n"
    endpoint.alive = RuntimeError("boom")
    status, _, body = await get(endpoint.port, "/healthz")
    assert status == 503 and b"RuntimeError('boom')" in body
    endpoint.alive = True
    assert (await get(endpoint.port, "/healthz"))[0] == 200


async def test_not_found_and_method_not_allowed(endpoint: Endpoint) -> None:
    assert (await get(endpoint.port, "/"))[0] == 404
    assert (await get(endpoint.port, "/metricsx"))[0] == 404
    status, headers, _ = await exchange(
        endpoint.port, b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert (await get(endpoint.port, "/healthz", "DELETE"))[0] == 405
    assert (await exchange(endpoint.port, b"\x00\xffgarbage\r\n\r\n"))[0] == 400
    assert (await exchange(endpoint.port, b"GET /metrics SPDY/3\r\n\r\n"))[0] == 400


async def test_oversized_head_is_refused(endpoint: Endpoint) -> None:
    big = b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 100_000 + b"\r\n\r\n"
    status, _, body = await exchange(endpoint.port, big)
    assert status == 431 and b"too large" in body
    # Endless header lines without the blank line: refused once past the limit, not buffered.
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 4000)
        await writer.drain()
        async with asyncio.timeout(5):
            status = parse_reply(await reader.read())[0]
        assert status == 431
    finally:
        writer.close()
    assert (await get(endpoint.port, "/healthz"))[0] == 200


async def test_silent_client_does_not_block_others(endpoint: Endpoint) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    try:
        t0 = loop.time()
        assert (await get(endpoint.port, "/healthz"))[0] == 200
        assert (await get(endpoint.port, "/metrics"))[0] == 200
        assert loop.time() - t0 < 0.4  # answered while the silent client is still connected
        async with asyncio.timeout(5):
            data = await reader.read()  # the server gives up on it after head_timeout
        assert parse_reply(data)[0] == 408
        assert loop.time() - t0 >= 0.4
    finally:
        writer.close()


async def test_trickling_client_is_cut_off_at_the_deadline(endpoint: Endpoint) -> None:
    """The deadline is for the whole head, not per read: a byte every 50 ms does not help."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    t0 = loop.time()

    async def trickle() -> None:
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"z" * 1000:
            writer.write(bytes([b]))
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(5):
            data = await reader.read()
        assert parse_reply(data)[0] == 408
        assert loop.time() - t0 < 2
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()


async def test_connection_limit_answers_busy(endpoint: Endpoint) -> None:
    held = [await asyncio.open_connection("127.0.0.1", endpoint.port) for _ in range(4)]
    try:
        await asyncio.sleep(0.05)  # let the server accept them
        status, _, body = await get(endpoint.port, "/healthz")
        assert status == 503 and body == b"busy\n"
    finally:
        for _, w in held:
            w.close()
    await asyncio.sleep(0.1)  # the held connections see EOF and free their slots
    assert (await get(endpoint.port, "/healthz"))[0] == 200


async def test_a_wedged_event_loop_fails_the_probe() -> None:
    """Why the endpoint lives in the plugin's loop: when that loop is stuck, /healthz goes
    unanswered (the probe times out) instead of a side thread reporting all is well."""
    here = asyncio.get_running_loop()
    started: asyncio.Future[tuple[int, asyncio.AbstractEventLoop, asyncio.Event]] = (
        here.create_future()
    )

    async def plugin_loop() -> None:
        stop = asyncio.Event()
        server = await serve_http("127.0.0.1", 0, Metrics().registry, lambda: True)
        port = server.sockets[0].getsockname()[1]
        here.call_soon_threadsafe(started.set_result, (port, asyncio.get_running_loop(), stop))
        await stop.wait()
        server.close()
        await server.wait_closed()

    thread = threading.Thread(target=asyncio.run, args=(plugin_loop(),))
    thread.start()
    port, loop, stop = await asyncio.wait_for(started, 10)
    try:
        assert (await get(port, "/healthz"))[0] == 200
        loop.call_soon_threadsafe(time.sleep, 1.0)  # wedge the plugin's loop
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            await exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n", timeout=0.5)
        await asyncio.sleep(0.6)
        assert (await get(port, "/healthz"))[0] == 200  # answered again once it moves
    finally:
        loop.call_soon_threadsafe(stop.set)
        await asyncio.to_thread(thread.join, 10)
