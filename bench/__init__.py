"""Benchmarks of the qaic device plugin as deployed (issue 6): `python -m bench [--quick]`."""
