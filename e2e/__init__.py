"""End-to-end helpers that drive the real tools (Pulumi CLI, kube-apiserver, etcd).

The tools come from e2e/tools.sh."""
