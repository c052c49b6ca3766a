"""The generic kubelet DRA machinery over real gRPC and real Unix sockets, driven by the
kubelet stand-in (sim/dra_kubelet.py): registration, prepare/unprepare, the checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from asyncinotify import Inotify, Mask

from qaic_device_plugin.kubelet.api.dra_health_v1 import api_pb2 as health_pb
from qaic_device_plugin.kubelet.dra.checkpoint import Checkpoint
from qaic_device_plugin.kubelet.dra.health import HealthFeed
from qaic_device_plugin.kubelet.dra.node import NodeService
from qaic_device_plugin.kubelet.dra.plugin import DraPlugin
from qaic_device_plugin.kubelet.dra.types import (
    AllocatedClaim,
    AllocatedDevice,
    ClaimRef,
    DeviceHealthReport,
    DraDriver,
    PreparedDevice,
    PrepareError,
    Toleration,
    base_request,
)
from qaic_device_plugin.sim.dra_kubelet import DraKubeletSim

DRIVER = "gpu.example.com"
A = ClaimRef("ns", "uid-a", "claim-a")
B = ClaimRef("ns", "uid-b", "claim-b")


class Claims:
    """The API server's view of allocated claims (what kubelet does not send)."""

    def __init__(self) -> None:
        self.allocated = {
            A.uid: AllocatedClaim(A, (AllocatedDevice("req", "node-1", "dev-0"),)),
            B.uid: AllocatedClaim(
                B,
                (
                    AllocatedDevice("r1", "node-1", "dev-1"),
                    AllocatedDevice(
                        "r2", "node-1", "dev-2",
                        tolerations=(Toleration("example.com/hot", "Exists", "", "NoSchedule"),),
                    ),
                ),
            ),
        }

    @classmethod
    def none(cls) -> Claims:
        claims = cls()
        claims.allocated = {}
        return claims

    def allocate(self, ref: ClaimRef, *devices: AllocatedDevice) -> ClaimRef:
        self.allocated[ref.uid] = AllocatedClaim(ref, devices)
        return ref

    async def get(self, ref: ClaimRef) -> AllocatedClaim:
        if ref.uid not in self.allocated:
            raise PrepareError("claim not allocated")
        return self.allocated[ref.uid]


class Driver(DraDriver):
    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.allocations: list[AllocatedClaim] = []
        self.unprepared: list[tuple[str, tuple[str, ...]]] = []

    async def prepare(self, claim: AllocatedClaim) -> list[PreparedDevice]:
        self.prepared.append(claim.ref.uid)
        self.allocations.append(claim)
        return [
            PreparedDevice((d.request,), d.pool, d.device, (f"example.com/gpu={d.device}",))
            for d in claim.devices
        ]

    async def unprepare(self, ref: ClaimRef, devices: Sequence[PreparedDevice]) -> None:
        self.unprepared.append((ref.uid, tuple(d.device for d in devices)))


def make_plugin(dirs: Path, driver: Driver, claims: Claims | None = None) -> DraPlugin:
    checkpoint = Checkpoint(dirs / "plugins" / DRIVER / "checkpoint.json")
    checkpoint.load()
    node = NodeService(driver, claims or Claims(), checkpoint)
    return DraPlugin(
        DRIVER,
        node,
        plugins_dir=dirs / "plugins",
        registry_dir=dirs / "registry",
        resync_seconds=30.0,  # the inotify watch must do the work in these tests
    )


@pytest.fixture
async def kubelet(dirs: Path) -> AsyncIterator[DraKubeletSim]:
    async with DraKubeletSim(dirs / "registry") as sim:
        yield sim


def health_of(msg: health_pb.NodeWatchResourcesResponse) -> dict[str, tuple[int, str]]:
    return {f"{d.device.pool_name}/{d.device.device_name}": (d.health, d.message)
            for d in msg.devices}


async def test_health_stream_reports_changes_and_repeats_itself(
    dirs: Path, kubelet: DraKubeletSim
) -> None:
    """dra-health v1: offered at registration only with a feed; kubelet's stream gets the
    full report at once, again on every change, and again on the heartbeat (kubelet turns a
    device Unknown once its timeout passes without a report)."""
    feed = HealthFeed((DeviceHealthReport("node-1", "dev-0", True),
                       DeviceHealthReport("node-1", "dev-1", True)))
    checkpoint = Checkpoint(dirs / "plugins" / DRIVER / "checkpoint.json")
    plugin = DraPlugin(DRIVER, NodeService(Driver(), Claims(), checkpoint),
                       plugins_dir=dirs / "plugins", registry_dir=dirs / "registry",
                       health=feed, health_heartbeat_seconds=0.2)
    await plugin.start()
    try:
        reg = await kubelet.wait_registered(DRIVER)
        assert reg.versions == ("v1.DRAPlugin", "v1.DRAResourceHealth")
        stream = kubelet.watch_health(DRIVER)
        first = await anext(stream)
        assert health_of(first) == {"node-1/dev-0": (health_pb.HEALTHY, ""),
                                    "node-1/dev-1": (health_pb.HEALTHY, "")}
        assert {d.health_check_timeout_seconds for d in first.devices} == {1}  # 3 x 0.2 s
        await feed.publish((DeviceHealthReport("node-1", "dev-0", True),
                            DeviceHealthReport("node-1", "dev-1", False, "device node: gone")))
        changed = await anext(stream)
        assert health_of(changed)["node-1/dev-1"] == (health_pb.UNHEALTHY, "device node: gone")
        again = await anext(stream)  # nothing changed: the heartbeat
        assert health_of(again) == health_of(changed)
        assert again.devices[0].last_updated_time >= changed.devices[0].last_updated_time
        await stream.aclose()
    finally:
        await plugin.close()


async def test_sockets_appear_already_listening(dirs: Path) -> None:
    """A watcher that dials a socket the moment its name appears is never refused: each socket
    is bound under a hidden name and renamed into place once it listens (grpc creates the
    file at bind but listens only at start; a refused GetInfo delayed kubelet's
    registration, and failed the kubelet stand-in under load)."""
    for d in ("registry", f"plugins/{DRIVER}"):
        (dirs / d).mkdir(parents=True)
    plugin = make_plugin(dirs, Driver())
    seen: list[tuple[str, Mask]] = []
    with Inotify() as inotify:
        for d in ("registry", f"plugins/{DRIVER}"):
            inotify.add_watch(dirs / d, Mask.CREATE | Mask.MOVED_TO)
        await plugin.start()
        try:
            async with asyncio.timeout(10):
                async for ev in inotify:
                    assert ev.name is not None
                    seen.append((str(ev.name), ev.mask & (Mask.CREATE | Mask.MOVED_TO)))
                    if sum(1 for n, _ in seen if n.endswith(".sock")) == 2:
                        break
        finally:
            await plugin.close()
    final = [(n, m) for n, m in seen if not n.startswith(".") and n.endswith(".sock")]
    assert final == [("dra.sock", Mask.MOVED_TO), (f"{DRIVER}-reg.sock", Mask.MOVED_TO)], seen


async def test_registration_offers_v1_service_at_dra_sock(
    dirs: Path, kubelet: DraKubeletSim
) -> None:
    plugin = make_plugin(dirs, Driver())
    await plugin.start()
    try:
        reg = await kubelet.wait_registered(DRIVER)
        assert reg.endpoint == str(dirs / "plugins" / DRIVER / "dra.sock")
        assert reg.versions == ("v1.DRAPlugin",)
        assert reg.socket == dirs / "registry" / f"{DRIVER}-reg.sock"
        assert plugin.registration.registered.is_set()  # kubelet's NotifyRegistrationStatus
    finally:
        await plugin.close()
    assert not list((dirs / "registry").glob("*.sock"))


async def test_prepare_unprepare_idempotent(
    dirs: Path, kubelet: DraKubeletSim, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the log records are built too (a bad `extra` key raises)
    driver = Driver()
    plugin = make_plugin(dirs, driver)
    await plugin.start()
    try:
        await kubelet.wait_registered(DRIVER)
        unknown = ClaimRef("ns", "uid-x", "claim-x")
        resp = await kubelet.prepare(DRIVER, [A, B, unknown])
        assert set(resp.claims) == {A.uid, B.uid, unknown.uid}
        b = resp.claims[B.uid]
        assert b.error == ""
        assert [(list(d.request_names), d.pool_name, d.device_name) for d in b.devices] == [
            (["r1"], "node-1", "dev-1"),
            (["r2"], "node-1", "dev-2"),
        ]
        assert list(b.devices[0].cdi_device_ids) == ["example.com/gpu=dev-1"]
        assert "not allocated" in resp.claims[unknown.uid].error
        again = await kubelet.prepare(DRIVER, [A, B])
        assert again.claims[B.uid] == b  # the same answer, the same devices ...
        # ... and the driver prepared them again (node-local state may be gone: a reboot)
        assert driver.prepared == [A.uid, B.uid, A.uid, B.uid]
        assert driver.allocations[2:] == driver.allocations[:2]

        un = await kubelet.unprepare(DRIVER, [A])
        assert un.claims[A.uid].error == ""
        un = await kubelet.unprepare(DRIVER, [A])  # again: still fine, driver cleans by UID
        assert un.claims[A.uid].error == ""
        assert driver.unprepared == [(A.uid, ("dev-0",)), (A.uid, ())]
    finally:
        await plugin.close()


async def test_prepared_claims_survive_a_plugin_restart(dirs: Path, kubelet: DraKubeletSim) -> None:
    first = Driver()
    plugin = make_plugin(dirs, first)
    await plugin.start()
    await kubelet.wait_registered(DRIVER)
    before = await kubelet.prepare(DRIVER, [B])
    await plugin.close()

    second = Driver()
    plugin = make_plugin(dirs, second, Claims.none())  # the API server is not asked again
    await plugin.start()
    try:
        await kubelet.wait_registered(DRIVER, count=2)
        after = await kubelet.prepare(DRIVER, [B])
        assert after.claims[B.uid] == before.claims[B.uid]
        assert second.allocations == first.allocations  # the checkpointed allocation
        await kubelet.unprepare(DRIVER, [B])
        assert second.unprepared == [(B.uid, ("dev-1", "dev-2"))]  # devices from the checkpoint
        doc = json.loads((dirs / "plugins" / DRIVER / "checkpoint.json").read_text())
        assert doc == {"version": 1, "claims": {}}
    finally:
        await plugin.close()


async def test_a_checkpoint_from_before_allocations_were_kept_still_prepares_again(
    dirs: Path, kubelet: DraKubeletSim
) -> None:
    """Operator situation: the driver is upgraded on a node with prepared claims, then the
    node reboots. Entries written without `allocated` are prepared again from their devices."""
    path = dirs / "plugins" / DRIVER / "checkpoint.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "claims": {A.uid: {
        "namespace": A.namespace, "name": A.name, "devices": [{
            "requests": ["req"], "pool": "node-1", "device": "dev-0",
            "cdiDeviceIDs": ["example.com/gpu=dev-0"]}]}}}))
    driver = Driver()
    plugin = make_plugin(dirs, driver, Claims.none())
    await plugin.start()
    try:
        await kubelet.wait_registered(DRIVER)
        resp = await kubelet.prepare(DRIVER, [A])
        assert resp.claims[A.uid].error == ""
        assert driver.allocations == [
            AllocatedClaim(A, (AllocatedDevice("req", "node-1", "dev-0"),))]
    finally:
        await plugin.close()


async def test_claim_source_reads_admin_access_and_tolerations() -> None:
    """What the scheduler decided per result and the driver must honour too: adminAccess and
    the taints the allocation tolerates (claims.py over a ResourceClaim as the API returns it;
    the client is a stand-in here, test_dra_e2e.py reads a real API server)."""
    from lightkube.resources.resource_v1 import ResourceClaim

    from qaic_device_plugin.kubelet.dra.claims import ApiClaimSource

    ref = ClaimRef("ns", "uid-1", "c")
    claim = ResourceClaim.from_dict({
        "metadata": {"name": "c", "namespace": "ns", "uid": "uid-1"},
        "spec": {"devices": {"requests": []}},
        "status": {"allocation": {"devices": {"results": [
            {"request": "socs/ultra", "driver": DRIVER, "pool": "p", "device": "d0",
             "tolerations": [{"key": "example.com/hot", "operator": "Exists",
                              "effect": "NoSchedule"}, {"key": "k", "value": "v"}]},
            {"request": "mon", "driver": DRIVER, "pool": "p", "device": "d1",
             "adminAccess": True},
            {"request": "x", "driver": "other.example.com", "pool": "p", "device": "d2"},
        ]}}},
    })

    class Client:
        async def get(self, *args: object, **kw: object) -> ResourceClaim:
            return claim

    got = await ApiClaimSource(Client(), DRIVER).get(ref)  # type: ignore[arg-type]
    assert got == AllocatedClaim(ref, (
        AllocatedDevice("socs/ultra", "p", "d0", tolerations=(
            Toleration("example.com/hot", "Exists", "", "NoSchedule"),
            Toleration("k", "Equal", "v", ""))),
        AllocatedDevice("mon", "p", "d1", admin_access=True),
    ))


def test_toleration_matching_follows_the_api() -> None:
    """DeviceToleration.ToleratesTaint: empty key or effect match any; Exists any value;
    Equal (the default) only the same value."""
    from qaic_device_plugin.kubelet.dra.types import Taint

    taint = Taint("qaic.qualcomm.com/unhealthy", "ras", "NoSchedule")
    assert Toleration("", "Exists").tolerates(taint)
    assert Toleration("qaic.qualcomm.com/unhealthy", "Exists").tolerates(taint)
    assert Toleration("qaic.qualcomm.com/unhealthy", "Equal", "ras").tolerates(taint)
    assert Toleration("qaic.qualcomm.com/unhealthy", "", "ras", "NoSchedule").tolerates(taint)
    assert not Toleration("qaic.qualcomm.com/unhealthy", "Equal", "sysfs").tolerates(taint)
    assert not Toleration("qaic.qualcomm.com/unhealthy", "Exists", "", "NoExecute").tolerates(taint)
    assert not Toleration("other", "Exists").tolerates(taint)
    assert AllocatedDevice("r", "p", "d", admin_access=True).tolerates(taint)
    assert not AllocatedDevice("r", "p", "d").tolerates(taint)


def test_base_request_strips_the_subrequest() -> None:
    assert base_request("socs/ultra") == "socs"
    assert base_request("socs") == "socs"


async def test_a_subrequest_goes_to_kubelet_as_its_parent_request(
    dirs: Path, kubelet: DraKubeletSim
) -> None:
    """A `firstAvailable` result names `<request>/<subrequest>`; kubelet matches a container's
    `claims[].request` (always the parent) against the request names prepare returns, so
    `socs/ultra` gave the container no device at all. The checkpoint keeps the full name."""
    claims = Claims.none()
    prio = claims.allocate(ClaimRef("ns", "uid-p", "prio"),
                           AllocatedDevice("socs/ultra", "node-1", "dev-0"),
                           AllocatedDevice("other", "node-1", "dev-1"))
    plugin = make_plugin(dirs, Driver(), claims)
    await plugin.start()
    try:
        await kubelet.wait_registered(DRIVER)
        for _ in range(2):  # prepared, then prepared again from the checkpoint
            resp = await kubelet.prepare(DRIVER, [prio])
            got = resp.claims[prio.uid]
            assert got.error == ""
            assert [list(d.request_names) for d in got.devices] == [["socs"], ["other"]]
        doc = json.loads((dirs / "plugins" / DRIVER / "checkpoint.json").read_text())
        assert doc["claims"][prio.uid]["devices"][0]["requests"] == ["socs/ultra"]
    finally:
        await plugin.close()


async def test_a_device_prepared_for_one_claim_is_refused_to_another(
    dirs: Path, kubelet: DraKubeletSim
) -> None:
    """Last line of defence: the scheduler never allocates one device to two claims, but if
    it happens (a stale checkpoint entry, a bug elsewhere) the second prepare fails naming
    both claims instead of two pods sharing it silently. adminAccess allocations, and those
    with a shareID (consumable capacity), may share a device; after unprepare it is free."""
    claims = Claims.none()
    first = claims.allocate(A, AllocatedDevice("req", "node-1", "dev-0"))
    second = claims.allocate(ClaimRef("other", "uid-c", "claim-c"),
                             AllocatedDevice("req", "node-1", "dev-9"),
                             AllocatedDevice("req", "node-1", "dev-0"))
    admin = claims.allocate(ClaimRef("ns", "uid-m", "monitor"),
                            AllocatedDevice("req", "node-1", "dev-0", admin_access=True))
    shared = claims.allocate(ClaimRef("ns", "uid-s", "shared"),
                             AllocatedDevice("req", "node-1", "dev-5", share_id="s1"))
    shared_too = claims.allocate(ClaimRef("ns", "uid-t", "shared-too"),
                                 AllocatedDevice("req", "node-1", "dev-5", share_id="s2"))
    # A share and a whole allocation of one device never coexist (a checkpoint from before a
    # change of the share count could hold the whole one).
    whole = claims.allocate(ClaimRef("ns", "uid-w", "whole"), AllocatedDevice("req", "node-1",
                                                                              "dev-5"))
    driver = Driver()
    plugin = make_plugin(dirs, driver, claims)
    await plugin.start()
    try:
        await kubelet.wait_registered(DRIVER)
        resp = await kubelet.prepare(DRIVER, [first, second, admin, shared, shared_too, whole])
        assert "already prepared for claim ns/shared (UID uid-s)" in resp.claims[whole.uid].error
        assert resp.claims[first.uid].error == ""
        assert resp.claims[second.uid].error == (
            "prepare other/claim-c: device node-1/dev-0 is already prepared for claim "
            "ns/claim-a (UID uid-a); it cannot be given to claim other/claim-c as well. Both "
            "were allocated the same hardware: unprepare or delete the pod of one of them"
        )
        assert second.uid not in driver.prepared
        for ok in (admin, shared, shared_too):
            assert resp.claims[ok.uid].error == "", ok
        await kubelet.unprepare(DRIVER, [first])
        assert (await kubelet.prepare(DRIVER, [second])).claims[second.uid].error == ""
    finally:
        await plugin.close()


async def test_corrupt_checkpoint_is_logged_and_set_aside(
    dirs: Path, kubelet: DraKubeletSim, caplog: pytest.LogCaptureFixture
) -> None:
    path = dirs / "plugins" / DRIVER / "checkpoint.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"version": 1, "claims": {"uid-a": {"namesp')
    driver = Driver()
    with caplog.at_level(logging.ERROR):
        plugin = make_plugin(dirs, driver)
    assert any(getattr(r, "event", "") == "dra_checkpoint_bad" for r in caplog.records)
    assert path.with_name("checkpoint.json.bad").exists()
    await plugin.start()
    try:
        await kubelet.wait_registered(DRIVER)
        resp = await kubelet.prepare(DRIVER, [A])
        assert resp.claims[A.uid].error == ""
        assert driver.prepared == [A.uid]
        assert A.uid in json.loads(path.read_text())["claims"]
    finally:
        await plugin.close()


async def test_removed_sockets_are_recreated_and_kubelet_re_registers(
    dirs: Path, kubelet: DraKubeletSim
) -> None:
    plugin = make_plugin(dirs, Driver())
    await plugin.start()
    run = asyncio.create_task(plugin.run())
    try:
        reg = await kubelet.wait_registered(DRIVER)
        reg.socket.unlink()  # what a kubelet restart with a wiped registry dir does
        await kubelet.wait_registered(DRIVER, count=2)
        assert plugin.bound == 3
        Path(reg.endpoint).unlink()
        await plugin.wait_bound(4)  # the DRA socket comes back; kubelet re-dials it
        resp = await kubelet.prepare(DRIVER, [A])
        assert resp.claims[A.uid].error == ""
        assert plugin.bound == 4
    finally:
        run.cancel()  # and wait for it: a run still re-binding after close() leaves a server
        with contextlib.suppress(asyncio.CancelledError):  # behind that hangs loop teardown
            await run
        await plugin.close()


def test_bad_dra_setting_is_one_line_exit_2(tmp_path: Path) -> None:
    import subprocess

    from qaic_device_plugin.sim.process import plugin_command

    out = subprocess.run(
        plugin_command(),
        env={"QAIC_ALLOCATION_API": "dra", "NODE_NAME": "Bad_Node", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "qaic-device-plugin: invalid setting NODE_NAME='Bad_Node': "
        "accepted: the node's name (downward API spec.nodeName), a DNS subdomain"
    ]
    missing = subprocess.run(
        plugin_command(), env={"QAIC_ALLOCATION_API": "dra"}, capture_output=True, text=True
    )
    assert missing.returncode == 2 and "invalid setting NODE_NAME=''" in missing.stderr
    bad = subprocess.run(
        plugin_command(), env={"QAIC_ALLOCATION_API": "grpc"}, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "QAIC_ALLOCATION_API='grpc'" in bad.stderr
