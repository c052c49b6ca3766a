"""The committed v1beta1 stubs must be exactly what `make proto` generates from the .proto,
and the .proto must keep kubelet's names and field numbers (FACTS.md section 4)."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from grpc_tools import protoc

from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb

ROOT = Path(__file__).resolve().parents[1] / "plugin_image"
API = Path("qaic_device_plugin/kubelet/api")
GENERATED = ("deviceplugin_pb2.py", "deviceplugin_pb2.pyi", "deviceplugin_pb2_grpc.py")


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    (tmp_path / API).mkdir(parents=True)
    shutil.copy(ROOT / API / "deviceplugin.proto", tmp_path / API / "deviceplugin.proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{tmp_path}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(API / "deviceplugin.proto"),
        ]
    )
    assert rc == 0
    stale = [n for n in GENERATED if not filecmp.cmp(tmp_path / API / n, ROOT / API / n, False)]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit the result"


def test_wire_names_and_numbers_match_kubelet() -> None:
    d = pb.DESCRIPTOR
    assert d.package == "v1beta1"
    methods = {s.name: [m.name for m in s.methods] for s in d.services_by_name.values()}
    assert methods == {
        "Registration": ["Register"],
        "DevicePlugin": [
            "GetDevicePluginOptions",
            "ListAndWatch",
            "GetPreferredAllocation",
            "Allocate",
            "PreStartContainer",
        ],
    }
    assert d.services_by_name["DevicePlugin"].methods_by_name["ListAndWatch"].server_streaming
    fields = {
        m.name: {f.name: f.number for f in m.fields} for m in d.message_types_by_name.values()
    }
    assert fields["RegisterRequest"] == {
        "version": 1,
        "endpoint": 2,
        "resource_name": 3,
        "options": 4,
    }
    assert fields["Device"] == {"ID": 1, "health": 2, "topology": 3}
    assert fields["ContainerPreferredAllocationRequest"] == {
        "available_deviceIDs": 1,
        "must_include_deviceIDs": 2,
        "allocation_size": 3,
    }
    assert fields["ContainerAllocateResponse"] == {
        "envs": 1,
        "mounts": 2,
        "devices": 3,
        "annotations": 4,
        "cdi_devices": 5,
    }
    assert fields["DeviceSpec"] == {"container_path": 1, "host_path": 2, "permissions": 3}
    assert fields["DevicePluginOptions"] == {
        "pre_start_required": 1,
        "get_preferred_allocation_available": 2,
    }
    assert fields["NUMANode"] == {"ID": 1}
