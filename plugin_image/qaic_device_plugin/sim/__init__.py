"""Simulated node, kubelet simulator and demo."""
