"""Metrics and the HTTP endpoint that serves them and the liveness probe."""
