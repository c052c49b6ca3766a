"""The committed stubs must be exactly what `make proto` generates from the .proto files; the
device-plugin .proto must keep kubelet's names and field numbers (FACTS.md section 4), and the
PodResources .proto must be k8s.io/kubelet v0.37.2's file byte for byte."""

from __future__ import annotations

import filecmp
import hashlib
import shutil
from pathlib import Path

import pytest
from grpc_tools import protoc

from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.kubelet.api import podresources_v1_pb2 as pr

ROOT = Path(__file__).resolve().parents[1] / "plugin_image"
API = Path("qaic_device_plugin/kubelet/api")
PROTOS = ("deviceplugin", "podresources_v1")
# sha256 of pkg/apis/podresources/v1/api.proto in the k8s.io/kubelet v0.37.2 module
# (`go mod download -json k8s.io/kubelet@v0.37.2`, then read it from the printed Dir).
PODRESOURCES_V1_SHA256 = "b261f07b951c6ae807c90a3137475733a105c085d3fee62ac62199e0d986c823"


@pytest.mark.parametrize("proto", PROTOS)
def test_committed_stubs_are_fresh(tmp_path: Path, proto: str) -> None:
    (tmp_path / API).mkdir(parents=True)
    shutil.copy(ROOT / API / f"{proto}.proto", tmp_path / API / f"{proto}.proto")
    rc = protoc.main(
        [
            "protoc",
            f"-I{tmp_path}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(API / f"{proto}.proto"),
        ]
    )
    assert rc == 0
    generated = (f"{proto}_pb2.py", f"{proto}_pb2.pyi", f"{proto}_pb2_grpc.py")
    stale = [n for n in generated if not filecmp.cmp(tmp_path / API / n, ROOT / API / n, False)]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit the result"


def test_podresources_proto_is_kubelets_unchanged() -> None:
    digest = hashlib.sha256((ROOT / API / "podresources_v1.proto").read_bytes()).hexdigest()
    assert digest == PODRESOURCES_V1_SHA256, "podresources_v1.proto differs from kubelet v0.37.2"


def test_podresources_wire_names_and_numbers() -> None:
    d = pr.DESCRIPTOR
    assert d.package == "v1"
    lister = d.services_by_name["PodResourcesLister"]
    assert [m.name for m in lister.methods] == ["List", "GetAllocatableResources", "Get"]
    fields = {
        m.name: {f.name: f.number for f in m.fields} for m in d.message_types_by_name.values()
    }
    assert fields["ListPodResourcesResponse"] == {"pod_resources": 1}
    assert fields["PodResources"]["name"] == 1 and fields["PodResources"]["namespace"] == 2
    assert fields["ContainerResources"]["name"] == 1
    assert fields["ContainerResources"]["devices"] == 2
    assert fields["ContainerDevices"] == {"resource_name": 1, "device_ids": 2, "topology": 3}


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
