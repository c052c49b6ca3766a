"""Kubernetes device plugin for Qualcomm Cloud AI 100 accelerators."""

__version__ = "0.1.0"
