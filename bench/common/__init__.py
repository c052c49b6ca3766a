"""What more than one bench job uses: the error that fails a run, the floors measured beside
the figures (a bare grpcio server, `import grpc`), /proc readings and medians/p99s.

Nothing here imports a job package (bench.live, bench.sidebyside, ...), so every job can import
from here without a cycle.
"""
