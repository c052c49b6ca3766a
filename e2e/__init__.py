"""End-to-end helpers that drive the real tools (Pulumi CLI, kube-apiserver + etcd); see e2e/tools.sh."""
