"""A real single-node Kubernetes cluster on this machine, for the e2e suite.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd and a kubelet run
inside a network namespace the harness creates (x.y.z.10 of a documentation range that no
host route uses, on a veth whose other end is x.y.z.1 in the host's namespace), so no test
traffic leaves the machine. The node carries a fake Cloud AI 100 tree (sysfs, /dev/accel,
qaic-util) under /run/qaic-e2e/node. Everything is started and stopped by PID; sysctls,
mounts, cgroups and /dev/accel are put back as they were. ../shared/REAL_PARTS.md §2 and §4
tell the quirks.

    python -m cluster up      # start, print the kubeconfig path, wait for Ctrl-C
"""
