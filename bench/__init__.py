"""Benchmarks of the qaic device plugin as deployed (issue 6): `python -m bench [--quick]`."""

import os

# Quiet grpc core's INFO lines in this process only (e.g. "Got goaway" each time the simulated
# kubelet restarts): grpc reads GRPC_VERBOSITY once, at import, so the variable is set for the
# import and removed again, and the plugin processes we start keep the caller's environment.
if "GRPC_VERBOSITY" not in os.environ:
    os.environ["GRPC_VERBOSITY"] = "ERROR"
    import grpc  # noqa: F401

    del os.environ["GRPC_VERBOSITY"]
