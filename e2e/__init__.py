"""Real Kubernetes control-plane parts for end-to-end tests (loopback only)."""
