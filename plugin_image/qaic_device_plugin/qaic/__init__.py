"""qaic discovery, SKU, topology and health: knows nothing about gRPC."""
