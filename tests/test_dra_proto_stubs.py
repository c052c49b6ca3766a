"""The committed plugin-registration v1, DRA v1 and DRA health v1 stubs must be what `make proto`
generates, and the .proto files must be k8s.io/kubelet v0.37.2's (wire names and numbers
kubelet uses)."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest
from grpc_tools import protoc

from qaic_device_plugin.kubelet.api.dra_health_v1 import api_pb2 as health
from qaic_device_plugin.kubelet.api.dra_v1 import api_pb2 as dra
from qaic_device_plugin.kubelet.api.pluginregistration_v1 import api_pb2 as reg

ROOT = Path(__file__).resolve().parents[1] / "plugin_image"
APIS = [Path("qaic_device_plugin/kubelet/api") / d
        for d in ("pluginregistration_v1", "dra_v1", "dra_health_v1")]
GENERATED = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


@pytest.mark.parametrize("api", APIS, ids=lambda p: p.name)
def test_committed_stubs_are_fresh(tmp_path: Path, api: Path) -> None:
    (tmp_path / api).mkdir(parents=True)
    shutil.copy(ROOT / api / "api.proto", tmp_path / api / "api.proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{tmp_path}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(api / "api.proto"),
        ]
    )
    assert rc == 0
    stale = [n for n in GENERATED if not filecmp.cmp(tmp_path / api / n, ROOT / api / n, False)]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit the result"


def _fields(d: object) -> dict[str, dict[str, int]]:
    return {
        m.name: {f.name: f.number for f in m.fields}
        for m in d.message_types_by_name.values()  # type: ignore[attr-defined]
    }


def test_registration_wire_names_match_kubelet() -> None:
    d = reg.DESCRIPTOR
    assert d.package == "pluginregistration"  # kubelet's own, "should have been v1"
    service = d.services_by_name["Registration"]
    assert service.full_name == "pluginregistration.Registration"
    assert [m.name for m in service.methods] == ["GetInfo", "NotifyRegistrationStatus"]
    fields = _fields(d)
    assert fields["PluginInfo"] == {
        "type": 1,
        "name": 2,
        "endpoint": 3,
        "supported_versions": 4,
    }
    assert fields["RegistrationStatus"] == {"plugin_registered": 1, "error": 2}


def test_dra_wire_names_match_kubelet() -> None:
    d = dra.DESCRIPTOR
    service = d.services_by_name["DRAPlugin"]
    # kubelet invokes /k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources
    assert service.full_name == "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
    assert [m.name for m in service.methods] == ["NodePrepareResources", "NodeUnprepareResources"]
    fields = _fields(d)
    assert fields["Claim"] == {"namespace": 1, "uid": 2, "name": 3}
    assert fields["Device"] == {
        "request_names": 1,
        "pool_name": 2,
        "device_name": 3,
        "cdi_device_ids": 4,
        "share_id": 5,
    }
    assert fields["NodePrepareResourceResponse"] == {"devices": 1, "error": 2}
    assert fields["NodeUnprepareResourceResponse"] == {"error": 1}


def test_dra_health_wire_names_match_kubelet() -> None:
    d = health.DESCRIPTOR
    service = d.services_by_name["DRAResourceHealth"]
    # kubelet negotiates "v1.DRAResourceHealth" and calls /v1.DRAResourceHealth/NodeWatchResources
    assert service.full_name == "v1.DRAResourceHealth"
    assert [m.name for m in service.methods] == ["NodeWatchResources"]
    assert service.methods[0].server_streaming  # type: ignore[attr-defined]
    fields = _fields(d)
    assert fields["DeviceIdentifier"] == {"pool_name": 1, "device_name": 2}
    assert fields["DeviceHealth"] == {
        "device": 1,
        "health": 2,
        "last_updated_time": 3,
        "health_check_timeout_seconds": 4,
        "message": 5,
    }
    assert fields["NodeWatchResourcesResponse"] == {"devices": 1}
    assert {v.name: v.number for v in d.enum_types_by_name["HealthStatus"].values} == {
        "UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}

