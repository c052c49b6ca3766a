"""Real Kubernetes clusters on this machine, for the e2e suite.

- cluster.py: the single-node cluster. etcd, kube-apiserver, kube-controller-manager,
  kube-scheduler, containerd and a kubelet run inside a network namespace the harness creates
  (x.y.z.10 of a documentation range that no host route uses, on a veth whose other end is
  x.y.z.1 in the host's namespace), so no test traffic leaves the machine. The node carries a
  fake Cloud AI 100 tree (sysfs, /dev/accel, qaic-util) under /run/qaic-e2e/node.
- fleet.py: the multi-node cluster. The same control plane on a bridge; each node in network
  and mount namespaces of its own (its own /var/lib/kubelet, /dev/accel, /var/run/cdi,
  /run/qaic-e2e/node ...), with its own cgroup root, containerd 2, kubelet and cards; nodes
  join and leave while it runs.

Everything is started and stopped by PID; sysctls, mounts, cgroups, namespaces and /dev/accel
are put back as they were, also after a killed run (leftovers.py, `python -m cluster down`).
../shared/REAL_PARTS.md §2 and §4 tell the quirks.

    python -m cluster up              # single node: print the kubeconfig path, wait for Ctrl-C
    python -m cluster up --nodes 3    # the fleet
"""
