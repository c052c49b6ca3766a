"""Configuration files of containerd, its CNI network and the kubelet (REAL_PARTS.md §2)."""

from __future__ import annotations

import json
from pathlib import Path

from .pki import KeyPair

CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
POD_SUBNET = "10.244.0.0/24"


def containerd_toml(work: Path, sandbox_image: str, v2: bool = False,
                    pod_subnet: str = POD_SUBNET) -> Path:
    """`restrict_oom_score_adj`: there is no CAP_SYS_RESOURCE here, so runc cannot lower it.

    `v2`: containerd 2.x (config version 3), the runtime with CDI, which DRA needs: kubelet
    names the claim's CDI devices and the runtime injects them (Debian's 1.6 ignores them).
    """
    cni = work / "cni"
    (cni / "net.d").mkdir(parents=True, exist_ok=True)
    (cni / "net.d" / "10-qaic-e2e.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0",
        "name": "qaic-e2e",
        "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_subnet}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(cni / "ipam")},
        }],
    }, indent=1))
    path = work / "containerd.toml"
    if v2:
        path.write_text(CONTAINERD_V2.format(
            root=work / "containerd/root", state=containerd_state(work, v2=True),
            socket=socket(work),
            sandbox_image=sandbox_image, cni_bin=CNI_BIN, cni_conf=cni / "net.d"))
        return path
    path.write_text(f"""version = 2
root = "{work / 'containerd/root'}"
state = "{containerd_state(work, v2=False)}"
[grpc]
  address = "{socket(work)}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni / 'net.d'}"
""")
    return path


CONTAINERD_V2 = """version = 3
root = "{root}"
state = "{state}"
imports = []
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.nri.v1.nri",
  "io.containerd.image-verifier.v1.bindir",
]

[grpc]
  address = "{socket}"
  # ttrpc address defaults to "{socket}.ttrpc" for config version 3

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"

[plugins."io.containerd.cri.v1.runtime"]
  # no CAP_SYS_RESOURCE on these machines: never lower oom_score_adj below our own
  restrict_oom_score_adj = true
  # CDI is on by default since v2.0 (`enable_cdi` was removed in v2.4: unknown key there)
  cdi_spec_dirs = ["/etc/cdi", "/var/run/cdi"]
  # pod network namespaces under {state} rather than /var/run/netns (no clash with `ip netns`)
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
        # the shim's default runc root is /run/containerd/runc: keep it under {state}
        Root = "{state}/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"

[plugins."io.containerd.shim.v1.manager"]
  # shim sockets default to /run/containerd/s/<sha256>: keep them under {state}
  # (unix socket path limit 108 bytes: {state} must be shorter than ~40 characters)
  socket_dir = "{state}/s"

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def containerd_state(work: Path, v2: bool) -> Path:
    """containerd's state dir (a tmpfs under /run on a real host: sandboxes, shim sockets).
    v2's is short: the shim sockets go under {state}/s/<64 hex> (108-byte socket paths)."""
    return work / "cs" if v2 else work / "containerd/state"


def socket(work: Path) -> Path:
    return work / "containerd" / "containerd.sock"


def kubelet_yaml(work: Path, *, node_ip: str, ca: Path, serving: KeyPair,
                 cgroup_root: str | None = None, status_every: str = "500ms") -> Path:
    """A kubelet for a node of a real cluster, on this machine's quirks (cgroup v1, no udev).

    Eviction thresholds are off: a shared CI disk must not taint the node mid-test.
    `cgroup_root`: where its pods' cgroups go (`<root>/kubepods`); the nodes of a fleet share
    the host's cgroup hierarchies, and a kubelet removes pod cgroups it does not know of.
    `status_every`: how often it reports node status (allocatable reaches the API that fast).
    """
    path = work / "kubelet.yaml"
    extra = {"cgroupRoot": cgroup_root} if cgroup_root else {}
    path.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "readOnlyPort": 0,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "enforceNodeAllocatable": [],
        "containerRuntimeEndpoint": f"unix://{socket(work)}",
        "resolvConf": "",
        "evictionHard": {"memory.available": "0%", "nodefs.available": "0%",
                         "imagefs.available": "0%", "nodefs.inodesFree": "0%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": status_every,
        "syncFrequency": "5s",
        "shutdownGracePeriod": "0s",
        **extra,
    }, indent=1))
    return path
