"""End-to-end helpers that drive the real tools (Pulumi CLI, cluster); see e2e/tools.sh."""
