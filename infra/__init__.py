"""Pulumi program for qaic-k8s: image build, device-plugin DaemonSet, sample workloads."""
